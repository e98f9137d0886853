"""``domainllm eval support-answers``: does the bot answer what its knowledge base covers, and hand
off what it does not?

The knowledge base is the project's sample help centre (``data/samples/support``: articles and the
FAQ), ingested into a temporary folder. Three authored question sets run through the real
answering pipeline (the real engine with the support adapter, MiniLM, the hybrid index, the rules):

* ``in_kb``: questions the KB answers, each with the documents that answer it. An answer is
  *right* when it cites one of them, *wrong* when it answers citing none of them; a handoff is
  neither (it costs a person's time, not the customer's trust).
* ``out_of_kb``: questions the KB does not answer: each should hand off.
* ``rules``: messages that a rule topic must always hand off (fraud, legal, a person asked for).

The retrieval gate (``min_retrieval``) runs before generation, so the report also sweeps it over
the recorded retrieval strengths: the trade-off between out-of-KB handoffs and in-KB answers.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from apps.support.answer import Reply, SupportBot
from apps.support.documents import parse_document_report, slug_of
from apps.support.intents import IntentClassifier
from apps.support.kb import KnowledgeBase
from apps.support.rules import load_rules
from apps.support.settings import SAMPLES_DIR, SupportSettings

log = logging.getLogger(__name__)

SETS = ("in_kb", "out_of_kb", "rules")


@dataclass
class Outcome:
    set: str
    question: str
    expected: list[str]
    reply: Reply
    seconds: float
    retrieval: float | None

    def cited(self) -> set[str]:
        ids = {c.doc_id for c in self.reply.citations}
        ids |= {c.url.rsplit("/", 1)[-1] for c in self.reply.citations if c.url and c.url.startswith("/help/")}
        return ids

    @property
    def right(self) -> bool:
        return not self.reply.handoff and bool(self.cited() & set(self.expected))


def load_sample_kb(kb: KnowledgeBase, samples: Path = SAMPLES_DIR) -> int:
    """Ingest the sample help centre (articles and FAQ, not the eval sets); the number of documents."""
    docs = []
    for path in sorted((samples / "articles").glob("*")):  # served at /help/<doc_id>, as `make run` does
        docs.extend(parse_document_report(path.name, path.read_bytes(), url=f"/help/{slug_of(path.name)}").documents)
    docs.extend(parse_document_report("faq.csv", (samples / "faq.csv").read_bytes()).documents)
    kb.upsert_many(docs)
    return len(docs)


def read_set(samples: Path, name: str) -> list[dict[str, Any]]:
    path = samples / "eval" / f"{name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the support eval needs the sample question sets")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run(engine: Any, settings: SupportSettings, samples: Path = SAMPLES_DIR, limit: int | None = None) -> list[Outcome]:
    outcomes = []
    with tempfile.TemporaryDirectory() as tmp:
        kb = KnowledgeBase(Path(tmp) / "kb", engine)
        kb.warm_up()
        load_sample_kb(kb, samples)
        bot = SupportBot(
            engine, kb, load_rules(settings.rules_path), settings, IntentClassifier(engine, settings.adapter)
        )
        for name in SETS:
            rows = read_set(samples, name)[:limit]
            for row in rows:
                started = time.perf_counter()
                plan = bot.plan(row["question"])
                if plan.reply is not None:
                    reply = plan.reply
                else:
                    assert plan.prompt is not None
                    text = engine.generate(plan.prompt, model=bot.model, params=bot.sampling()).text
                    reply = bot.finish(plan, text)
                retrieval = plan.retrieval if plan.passages else None
                outcomes.append(
                    Outcome(
                        name, row["question"], row.get("doc_ids", []), reply, time.perf_counter() - started, retrieval
                    )
                )
                log.info("%s %s -> %s %s", name, row["question"][:60], reply.source, reply.reason or "")
    return outcomes


def _rate(flags: list[bool]) -> float | None:
    return float(np.mean(flags)) if flags else None


def summarise(outcomes: list[Outcome], settings: SupportSettings) -> dict[str, Any]:
    by = {name: [o for o in outcomes if o.set == name] for name in SETS}
    in_kb, out_kb, rules = by["in_kb"], by["out_of_kb"], by["rules"]
    answered = [o for o in in_kb if not o.reply.handoff]
    report: dict[str, Any] = {
        "in_kb": {
            "n": len(in_kb),
            "answered_rate": _rate([not o.reply.handoff for o in in_kb]),
            "right_rate": _rate([o.right for o in in_kb]),
            "wrong_rate": _rate([not o.reply.handoff and not o.right for o in in_kb]),
            "handoff_rate": _rate([o.reply.handoff for o in in_kb]),
            "precision_when_answering": _rate([o.right for o in answered]),
            "by_source": {
                s: sum(o.reply.source == s for o in in_kb) for s in ("faq", "generated", "canned", "handoff")
            },
        },
        "out_of_kb": {
            "n": len(out_kb),
            "handoff_rate": _rate([o.reply.handoff for o in out_kb]),
            "answered": [o.question for o in out_kb if not o.reply.handoff],
        },
        "rules": {
            "n": len(rules),
            "handoff_rate": _rate([o.reply.handoff for o in rules]),
            "missed": [o.question for o in rules if not o.reply.handoff],
        },
        "latency_s": {
            source: {"n": len(ts), "p50": float(np.percentile(ts, 50)), "max": float(max(ts))}
            for source in ("faq", "generated", "handoff", "canned")
            if (ts := [o.seconds for o in outcomes if o.reply.source == source])
        },
        "settings": {
            "faq_threshold": settings.faq_threshold,
            "min_retrieval": settings.min_retrieval,
            "min_confidence": settings.min_confidence,
            "adapter": settings.adapter,
        },
    }
    report["gate_sweep"] = gate_sweep(in_kb, out_kb)
    return report


def gate_sweep(in_kb: list[Outcome], out_kb: list[Outcome]) -> list[dict[str, float]]:
    """For other ``min_retrieval`` values, the handoff rate of each set: a question hands off when
    it handed off for another reason (a rule, low confidence), or its retrieval strength falls
    below the gate. FAQ matches and canned answers never reach the gate. A question the current gate
    handed off counts as answered below its strength (its generation is not re-run)."""

    def hands_off(o: Outcome, gate: float) -> bool:
        if o.reply.handoff and o.reply.reason != "no_match":
            return True
        return o.retrieval is not None and o.reply.source in ("generated", "handoff") and o.retrieval < gate

    return [
        {
            "min_retrieval": gate,
            "out_of_kb_handoff": _rate([hands_off(o, gate) for o in out_kb]) or 0.0,
            "in_kb_handoff": _rate([hands_off(o, gate) for o in in_kb]) or 0.0,
        }
        for gate in (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
    ]


def evaluate(engine: Any, settings: SupportSettings, out_dir: Path, limit: int | None = None) -> dict[str, Any]:
    outcomes = run(engine, settings, limit=limit)
    report = summarise(outcomes, settings)
    report["outcomes"] = [
        {
            "set": o.set,
            "question": o.question,
            "expected": o.expected,
            "source": o.reply.source,
            "reason": o.reply.reason,
            "answer": o.reply.answer,
            "cited": sorted(o.cited()),
            "right": o.right,
            "confidence": round(o.reply.confidence, 4),
            "retrieval": None if o.retrieval is None else round(o.retrieval, 4),
            "seconds": round(o.seconds, 3),
        }
        for o in outcomes
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "support_answers.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
