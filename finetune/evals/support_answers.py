"""``domainllm eval support-answers``: does the bot answer what its knowledge base covers, and hand
off what it does not?

The knowledge base is the project's sample help centre (``data/samples/support``: articles and the
FAQ). Three authored question sets run through the real answering pipeline (the real engine with the
support adapter, MiniLM, the hybrid index, the rules), which the caller builds and hands in as a
``Bot`` (the support app's ``SupportBot`` over a knowledge base holding the help centre), so this
module needs nothing of the serving code:

* ``in_kb``: questions the KB answers, each with the documents that answer it. An answer is
  *right* when it cites one of them, *wrong* when it answers citing none of them; a handoff is
  neither (it costs a person's time, not the customer's trust).
* ``out_of_kb``: questions the KB does not answer: each should hand off.
* ``rules``: messages that a rule topic must always hand off (fraud, legal, a person asked for).

The report also sweeps the answer gate (``retrieval_weight``, ``min_confidence``) over the
recorded retrieval strength and support of each generated answer: the trade-off between out-of-KB
handoffs and in-KB answers, from which the defaults were chosen.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.config import PROJECT_ROOT

log = logging.getLogger(__name__)

SAMPLES_DIR = PROJECT_ROOT / "data" / "samples" / "support"
SETS = ("in_kb", "out_of_kb", "rules")


class Cited(Protocol):
    @property
    def doc_id(self) -> str: ...

    @property
    def url(self) -> str | None: ...


class Answer(Protocol):
    """What the bot replied: the support app's ``Reply``."""

    @property
    def answer(self) -> str: ...

    @property
    def citations(self) -> Sequence[Cited]: ...

    @property
    def confidence(self) -> float: ...

    @property
    def handoff(self) -> bool: ...

    @property
    def source(self) -> str: ...  # "faq" | "generated" | "canned" | "handoff"

    @property
    def reason(self) -> str | None: ...

    @property
    def details(self) -> Mapping[str, Any]: ...


class Bot(Protocol):
    def answer(self, message: str) -> Answer: ...


class Gate(Protocol):
    """The bot's answer gate, reported next to the results: the support app's ``SupportSettings``."""

    @property
    def faq_threshold(self) -> float: ...

    @property
    def min_retrieval(self) -> float: ...

    @property
    def min_confidence(self) -> float: ...

    @property
    def retrieval_weight(self) -> float: ...

    @property
    def adapter(self) -> str: ...


@dataclass
class Outcome:
    set_name: str
    question: str
    expected: list[str]
    reply: Answer
    seconds: float

    @property
    def retrieval(self) -> float | None:
        """The retrieval strength, for answers that went past the FAQ and the rules."""
        value = self.reply.details.get("retrieval")
        return None if value is None else float(value)

    def cited(self) -> set[str]:
        ids = {c.doc_id for c in self.reply.citations}
        ids |= {c.url.rsplit("/", 1)[-1] for c in self.reply.citations if c.url and c.url.startswith("/help/")}
        return ids

    @property
    def right(self) -> bool:
        return not self.reply.handoff and bool(self.cited() & set(self.expected))


def read_set(samples: Path, name: str) -> list[dict[str, Any]]:
    path = samples / "eval" / f"{name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the support eval needs the sample question sets")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run(bot: Bot, samples: Path = SAMPLES_DIR, limit: int | None = None) -> list[Outcome]:
    """Every question of the three sets through ``bot``, one at a time, timed."""
    outcomes = []
    for name in SETS:
        for row in read_set(samples, name)[:limit]:
            started = time.perf_counter()
            reply = bot.answer(row["question"])
            outcomes.append(
                Outcome(name, row["question"], row.get("doc_ids", []), reply, time.perf_counter() - started)
            )
            log.info("%s %s -> %s %s", name, row["question"][:60], reply.source, reply.reason or "")
    return outcomes


def _rate(flags: list[bool]) -> float | None:
    return float(np.mean(flags)) if flags else None


def summarise(outcomes: list[Outcome], settings: Gate) -> dict[str, Any]:
    by = {name: [o for o in outcomes if o.set_name == name] for name in SETS}
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
            "retrieval_weight": settings.retrieval_weight,
            "adapter": settings.adapter,
        },
    }
    report["confidence_sweep"] = confidence_sweep(in_kb, out_kb)
    return report


def confidence_sweep(in_kb: list[Outcome], out_kb: list[Outcome]) -> list[dict[str, float]]:
    """The answer gate at other settings, from the recorded retrieval strength and support of every
    answer that reached generation (greedy decoding: the same answers at any gate). Per
    (``retrieval_weight``, ``min_confidence``): the in-KB share answered and answered right, and the
    out-of-KB share handed off. Outcomes that never reached generation keep their outcome."""

    def answered(o: Outcome, w: float, gate: float) -> bool | None:
        d = o.reply.details
        if "support" not in d:  # FAQ, canned, rule or retrieval-gate handoff: unchanged by this gate
            return None
        return bool(w * d["retrieval"] + (1 - w) * d["support"] >= gate)

    def right(o: Outcome) -> bool:
        return bool(set(o.reply.details.get("would_cite", [])) & set(o.expected))

    rows = []
    for w in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        for gate in (0.46, 0.48, 0.5, 0.52, 0.54, 0.56, 0.58, 0.6):
            ans_in = [answered(o, w, gate) for o in in_kb]
            ans_out = [answered(o, w, gate) for o in out_kb]
            in_answered = [a if a is not None else not o.reply.handoff for a, o in zip(ans_in, in_kb, strict=True)]
            in_right = [(a and right(o)) if a is not None else o.right for a, o in zip(ans_in, in_kb, strict=True)]
            out_handoff = [not a if a is not None else o.reply.handoff for a, o in zip(ans_out, out_kb, strict=True)]
            rows.append(
                {
                    "retrieval_weight": w,
                    "min_confidence": gate,
                    "in_kb_answered": _rate(in_answered) or 0.0,
                    "in_kb_right": _rate(in_right) or 0.0,
                    "out_of_kb_handoff": _rate(out_handoff) or 0.0,
                }
            )
    return rows


def evaluate(
    bot: Bot, settings: Gate, out_dir: Path, *, samples: Path = SAMPLES_DIR, limit: int | None = None
) -> dict[str, Any]:
    """Run the sets through ``bot`` (at most ``limit`` questions each); writes
    ``out_dir/support_answers.json`` and returns the report."""
    outcomes = run(bot, samples, limit=limit)
    report = summarise(outcomes, settings)
    report["outcomes"] = [
        {
            "set": o.set_name,
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
            "details": o.reply.details,
        }
        for o in outcomes
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "support_answers.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
