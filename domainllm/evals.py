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
    """Answers vs handoffs on the sample help centre, through the served bot's own pipeline."""
    from apps.support.answer import SupportBot
    from apps.support.documents import read_help_centre
    from apps.support.settings import SAMPLES_DIR
    from finetune.evals.support_answers import evaluate

    built = services()
    settings, engine = built.settings.support, built.engine
    with console.status("loading the engine"):
        engine.warm_up()
    with (
        console.status("answering the in-KB, out-of-KB and rule questions"),
        scratch_kb(read_help_centre(SAMPLES_DIR), engine) as kb,
    ):
        bot = SupportBot(engine, kb, built.support.rules, settings, built.support.intents)
        report = evaluate(bot, settings, out_dir=out, limit=limit)
    table = Table(title="support answers on the sample help centre")
    for col in ("set", "n", "answered (right)", "wrong", "handoff"):
        table.add_column(col, justify="right" if col != "set" else "left")
    ik, ok, rk = report["in_kb"], report["out_of_kb"], report["rules"]
    table.add_row(
        "in KB", str(ik["n"]), f"{ik['right_rate']:.3f}", f"{ik['wrong_rate']:.3f}", f"{ik['handoff_rate']:.3f}"
    )
    table.add_row("out of KB", str(ok["n"]), "", f"{1 - ok['handoff_rate']:.3f}", f"{ok['handoff_rate']:.3f}")
    table.add_row("rule topics", str(rk["n"]), "", f"{1 - rk['handoff_rate']:.3f}", f"{rk['handoff_rate']:.3f}")
    console.print(table)
    console.print(f"report: {out}/support_answers.json")
