"""``domainllm eval support-retrieval`` and ``support-answers``: the glue that hands the serving code
to the evaluations in ``finetune.evals`` (which never import apps)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.table import Table

from apps.support.documents import Document
from apps.support.kb import FusionConfig, scratch_kb
from core.embeddings import Embedder
from domainllm.common import console, services

RRF_BASELINE = FusionConfig(method="rrf", dense_weight=1.0, bm25_weight=1.0, rrf_k=60.0)  # plain RRF, for comparison


def kb_systems(embedder: Embedder, fusion: FusionConfig) -> Callable[[Any], AbstractContextManager[dict[str, Any]]]:
    """The retrieval evaluation's systems: a scratch knowledge base over an evaluation set's documents
    (``doc_id``, ``title``, ``text`` each), searched by BM25, MiniLM, the hybrid (``fusion``) and plain RRF."""

    @contextmanager
    def systems(data: Any) -> Iterator[dict[str, Any]]:
        docs = [Document(doc_id=d.doc_id, title=d.title, text=d.text) for d in data.documents]
        with scratch_kb(docs, embedder, fusion=fusion) as kb:

            def search(mode: str, variant: FusionConfig | None = None) -> Callable[[str, int], list[str]]:
                return lambda query, k: [h.doc_id for h in kb.search(query, k=k, mode=mode, fusion=variant)]

            yield {
                "bm25": search("bm25"),
                "dense": search("dense"),
                "hybrid": search("hybrid"),
                "hybrid_rrf60": search("hybrid", RRF_BASELINE),
            }

    return systems


def support_retrieval(out: Path, bitext_queries: int = 1000) -> None:
    """BM25, dense and hybrid retrieval on BankFAQs and Bitext."""
    from finetune.evals.support_retrieval import evaluate, print_report

    built, fusion = services(), FusionConfig()
    with console.status("embedding the evaluation sets and searching"):
        report = evaluate(
            built.settings.shared_data_dir,
            kb_systems(built.engine, fusion),
            out_dir=out,
            bitext_queries=bitext_queries,
            setup={"fusion": asdict(fusion), "hybrid_rrf60": asdict(RRF_BASELINE)},
        )
    print_report(report, console)
    console.print(f"report: {out}/support_retrieval.json")


def support_answers(out: Path, limit: int | None = None) -> None:
    """True answers and handoffs on the sample help centre, through the served bot's own pipeline;
    every reply is fact-checked against the documents it cites."""
    from apps.support.answer import SupportBot
    from apps.support.documents import read_help_centre
    from apps.support.extractive import fact_check
    from apps.support.settings import SAMPLES_DIR
    from finetune.evals.support_answers import Answer, evaluate

    built = services()
    settings, engine = built.settings.support, built.engine
    with console.status("loading the engine"):
        engine.warm_up()
    with scratch_kb(read_help_centre(SAMPLES_DIR), engine) as kb:
        bot = SupportBot(engine, kb, built.support.rules, settings, built.support.intents)
        with console.status("embedding the knowledge base's sentences"):
            bot.warm_up()

        def check(reply: Answer) -> list[str]:
            cited = [kb.get(c.doc_id) for c in reply.citations]
            return fact_check(reply.answer, [d.text for d in cited if d is not None])

        setup = {"selector": str(settings.selector_path), "adapter_for_intents": bot.model, "kb": str(SAMPLES_DIR)}
        report = evaluate(bot, check, out_dir=out, limit=limit, setup=setup)
    table = Table(title="support answers on the sample help centre (right and wrong: by script, on facts)")
    for col in ("set", "n", "right", "wrong", "handoff", "AUROC", "violations"):
        table.add_column(col, justify="right" if col != "set" else "left")
    for group in ("dev", "report"):
        g = report[group]
        ik, ok, rk = g["in_kb"], g["out_of_kb"], g["rules"]
        auc = ik["auroc_right_vs_wrong"]
        table.add_row(
            f"{group} in KB",
            str(ik["n"]),
            f"{ik['right']:.3f}",
            f"{ik['wrong']:.3f}",
            f"{ik['handoff']:.3f}",
            "" if auc is None else f"{auc:.3f}",
            str(len(g["violations"])),
        )
        table.add_row(
            f"{group} out of KB", str(ok["n"]), "", f"{1 - ok['handoff']:.3f}", f"{ok['handoff']:.3f}", "", ""
        )
        table.add_row(
            f"{group} rule topics", str(rk["n"]), "", f"{1 - rk['handoff']:.3f}", f"{rk['handoff']:.3f}", "", ""
        )
    console.print(table)
    console.print(f"report: {out}/support_answers.json")
