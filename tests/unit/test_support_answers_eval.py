"""The answers evaluation (finetune/evals/support_answers.py) on a bot that is handed in, as the CLI
hands in the support app's: right, wrong and handed-off answers counted per set, the gate sweep, the
report written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from apps.support.answer import Citation, Reply
from apps.support.settings import SupportSettings
from finetune.evals.support_answers import evaluate, read_set

pytestmark = pytest.mark.unit


class ScriptedBot:
    """Answers each question as scripted: a generated answer citing a document, or a handoff."""

    def __init__(self, script: dict[str, tuple[str, float, float] | str]) -> None:
        self.script = script

    def answer(self, message: str) -> Reply:
        step = self.script[message]
        if isinstance(step, str):  # a handoff, with its reason
            return Reply("A person will help.", [], 0.0, None, True, "handoff", reason=step, question=message)
        doc_id, retrieval, support = step
        details = {"retrieval": retrieval, "support": support, "would_cite": [doc_id]}
        confidence = 0.8 * retrieval + 0.2 * support
        citation = Citation(1, doc_id, doc_id, f"/help/{doc_id}")
        return Reply("An answer.", [citation], confidence, None, False, "generated", question=message, details=details)


def write_sets(root: Path) -> Path:
    sets: dict[str, list[dict[str, Any]]] = {
        "in_kb": [
            {"question": "How do returns work?", "doc_ids": ["returns-policy"]},
            {"question": "When is my refund paid?", "doc_ids": ["refund-timing"]},
            {"question": "Can I pick up in Leeds?", "doc_ids": ["leeds-store-pickup"]},
        ],
        "out_of_kb": [{"question": "Do you sell tyres?"}, {"question": "What is the weather?"}],
        "rules": [{"question": "Someone used my card"}],
    }
    for name, rows in sets.items():
        (root / "eval").mkdir(parents=True, exist_ok=True)
        (root / "eval" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_evaluate_counts_each_set_and_writes_the_report(tmp_path: Path) -> None:
    samples = write_sets(tmp_path / "samples")
    bot = ScriptedBot(
        {
            "How do returns work?": ("returns-policy", 0.9, 0.8),  # right
            "When is my refund paid?": ("returns-policy", 0.7, 0.6),  # wrong document
            "Can I pick up in Leeds?": "low_confidence",
            "Do you sell tyres?": "no_match",
            "What is the weather?": ("shipping-times", 0.5, 0.5),  # answered: should have handed off
            "Someone used my card": "rule:fraud",
        }
    )
    report = evaluate(bot, SupportSettings(), tmp_path / "out", samples=samples)
    assert report["in_kb"]["n"] == 3
    assert report["in_kb"]["right_rate"] == pytest.approx(1 / 3)
    assert report["in_kb"]["wrong_rate"] == pytest.approx(1 / 3)
    assert report["in_kb"]["precision_when_answering"] == pytest.approx(1 / 2)
    assert report["in_kb"]["by_source"] == {"faq": 0, "generated": 2, "canned": 0, "handoff": 1}
    assert report["out_of_kb"] == {"n": 2, "handoff_rate": 0.5, "answered": ["What is the weather?"]}
    assert report["rules"] == {"n": 1, "handoff_rate": 1.0, "missed": []}
    assert report["settings"]["adapter"] == "support"
    strict = next(r for r in report["confidence_sweep"] if (r["retrieval_weight"], r["min_confidence"]) == (1.0, 0.6))
    assert strict["out_of_kb_handoff"] == 1.0  # retrieval 0.5 < 0.6: the weather question would hand off
    assert strict["in_kb_answered"] == pytest.approx(2 / 3) and strict["in_kb_right"] == pytest.approx(1 / 3)
    written = json.loads((tmp_path / "out" / "support_answers.json").read_text())
    assert [o["right"] for o in written["outcomes"] if o["set"] == "in_kb"] == [True, False, False]
    limited = evaluate(bot, SupportSettings(), tmp_path / "out", samples=samples, limit=1)
    assert (limited["in_kb"]["n"], limited["out_of_kb"]["n"]) == (1, 1)


def test_a_missing_question_set_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"in_kb\.jsonl is missing"):
        read_set(tmp_path, "in_kb")
