"""``domainllm eval support-answers``: are the bot's answers true to the knowledge base, and does it
hand off what the knowledge base does not cover?

The knowledge base is the project's sample help centre (``data/samples/support``: articles and the
FAQ). The question sets run through the real answering pipeline (the real engine, MiniLM, the
hybrid index, the rules, the extractive answerer), which the caller builds and hands in as a
``Bot`` (the support app's ``SupportBot``), so this module needs nothing of the serving code.

Two groups of sets (``data/samples/support/eval``):

* ``dev``: ``in_kb_facts.jsonl``, ``out_of_kb.jsonl``, ``rules.jsonl``: the sets the selector was
  fitted and tuned on (``bench/probes/support_extractive.py``);
* ``report``: ``report/*.jsonl``, written in another style (short, typo-laden, multi-part) and
  never used to fit or tune anything.

Scoring, all by script:

* in-KB: a reply is *right* when it holds every expected fact of its row (a fact may list
  alternatives), *wrong* when it answers without them; a handoff is neither (it costs a person's
  time, not the customer's trust). The confidence's AUROC for right vs wrong is taken over the
  reply each question *would* get at any threshold (``details["would_answer"]``);
* out-of-KB: each should hand off; rules: each must hand off;
* every reply goes through ``check`` (the caller's: numbers, prices, dates, URLs, e-mails and names
  that are absent from the documents it cites); a reply with any is a *violation*.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.config import PROJECT_ROOT
from finetune.progress import track

log = logging.getLogger(__name__)

SAMPLES_DIR = PROJECT_ROOT / "data" / "samples" / "support"
GROUPS: dict[str, dict[str, str]] = {
    "dev": {"in_kb": "in_kb_facts.jsonl", "out_of_kb": "out_of_kb.jsonl", "rules": "rules.jsonl"},
    "report": {"in_kb": "report/in_kb.jsonl", "out_of_kb": "report/out_of_kb.jsonl", "rules": "report/rules.jsonl"},
}


class Cited(Protocol):
    @property
    def doc_id(self) -> str: ...


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
    def source(self) -> str: ...  # "extracted" | "canned" | "handoff"

    @property
    def reason(self) -> str | None: ...

    @property
    def details(self) -> Mapping[str, Any]: ...


class Bot(Protocol):
    def answer(self, message: str) -> Answer: ...


Check = Callable[[Answer], list[str]]  # the claims of a reply that its cited documents do not hold


def _norm(text: str) -> str:
    return " ".join(text.replace("–", "-").replace("—", "-").replace("’", "'").lower().split())


def has_fact(text: str, fact: str | list[str]) -> bool:
    """``text`` holds the fact (or one of its alternatives), case, dash and space insensitive."""
    t = _norm(text)
    return any(_norm(alt) in t for alt in (fact if isinstance(fact, list) else [fact]))


def holds_facts(text: str, facts: Sequence[str | list[str]]) -> bool:
    return bool(facts) and all(has_fact(text, f) for f in facts)


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """P(a positive scores above a negative), ties half; None without both classes."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return float(wins / (len(pos) * len(neg)))


@dataclass
class Outcome:
    group: str
    set_name: str
    row: dict[str, Any]
    reply: Answer
    seconds: float
    violations: list[str] = field(default_factory=list)

    @property
    def facts(self) -> list[Any]:
        return list(self.row.get("facts") or [])

    @property
    def right(self) -> bool:
        return not self.reply.handoff and holds_facts(self.reply.answer, self.facts)

    @property
    def would_answer(self) -> str:
        return self.reply.answer if not self.reply.handoff else str(self.reply.details.get("would_answer") or "")


def read_set(samples: Path, group: str, name: str) -> list[dict[str, Any]]:
    path = samples / "eval" / GROUPS[group][name]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the support eval needs the sample question sets")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run(
    bot: Bot,
    check: Check,
    samples: Path = SAMPLES_DIR,
    *,
    groups: Sequence[str] = ("dev", "report"),
    limit: int | None = None,
) -> list[Outcome]:
    """Every question of the sets through ``bot``, one at a time, timed and checked."""
    rows = [(g, n, row) for g in groups for n in GROUPS[g] for row in read_set(samples, g, n)[:limit]]
    outcomes = []
    for group, name, row in track(rows, "answering the question sets"):
        started = time.perf_counter()
        reply = bot.answer(row["question"])
        seconds = time.perf_counter() - started
        problems = check(reply) if not reply.handoff else []
        outcomes.append(Outcome(group, name, row, reply, seconds, problems))
        log.info("%s/%s %s -> %s %s", group, name, row["question"][:60], reply.source, reply.reason or "")
    return outcomes


def _rate(flags: list[bool]) -> float | None:
    return float(np.mean(flags)) if flags else None


def summarise_group(outcomes: list[Outcome]) -> dict[str, Any]:
    in_kb = [o for o in outcomes if o.set_name == "in_kb"]
    out_kb = [o for o in outcomes if o.set_name == "out_of_kb"]
    rules = [o for o in outcomes if o.set_name == "rules"]
    scorable = [o for o in in_kb if o.would_answer]
    answered = [o for o in in_kb if not o.reply.handoff]
    return {
        "in_kb": {
            "n": len(in_kb),
            "right": _rate([o.right for o in in_kb]),
            "wrong": _rate([not o.reply.handoff and not o.right for o in in_kb]),
            "handoff": _rate([o.reply.handoff for o in in_kb]),
            "precision_when_answering": _rate([o.right for o in answered]),
            "would_be_right": _rate([holds_facts(o.would_answer, o.facts) for o in in_kb]),
            "auroc_right_vs_wrong": auroc(
                [o.reply.confidence for o in scorable], [holds_facts(o.would_answer, o.facts) for o in scorable]
            ),
        },
        "out_of_kb": {
            "n": len(out_kb),
            "handoff": _rate([o.reply.handoff for o in out_kb]),
            "answered": [o.row["question"] for o in out_kb if not o.reply.handoff],
        },
        "rules": {
            "n": len(rules),
            "handoff": _rate([o.reply.handoff for o in rules]),
            "by_rule": _rate([(o.reply.reason or "").startswith("rule:") for o in rules]),
            "missed": [o.row["question"] for o in rules if not o.reply.handoff],
        },
        "replies_checked": sum(not o.reply.handoff for o in outcomes),
        "violations": [
            {"question": o.row["question"], "answer": o.reply.answer, "claims": o.violations}
            for o in outcomes
            if o.violations
        ],
        "latency_s": {
            "p50": float(np.percentile([o.seconds for o in outcomes], 50)) if outcomes else None,
            "p95": float(np.percentile([o.seconds for o in outcomes], 95)) if outcomes else None,
        },
    }


def evaluate(
    bot: Bot,
    check: Check,
    out_dir: Path,
    *,
    samples: Path = SAMPLES_DIR,
    groups: Sequence[str] = ("dev", "report"),
    limit: int | None = None,
    setup: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the sets through ``bot`` (at most ``limit`` questions each); writes
    ``out_dir/support_answers.json`` and returns the report."""
    outcomes = run(bot, check, samples, groups=groups, limit=limit)
    report: dict[str, Any] = {g: summarise_group([o for o in outcomes if o.group == g]) for g in groups}
    report["setup"] = dict(setup or {})
    report["outcomes"] = [
        {
            "set": f"{o.group}/{o.set_name}",
            "question": o.row["question"],
            "facts": o.facts,
            "source": o.reply.source,
            "reason": o.reply.reason,
            "answer": o.reply.answer,
            "would_answer": o.would_answer,
            "cited": [c.doc_id for c in o.reply.citations],
            "right": o.right,
            "confidence": round(float(o.reply.confidence), 4),
            "violations": o.violations,
            "seconds": round(o.seconds, 3),
        }
        for o in outcomes
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "support_answers.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
