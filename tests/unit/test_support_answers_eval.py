"""The answers evaluation (finetune/evals/support_answers.py) on a bot that is handed in, as the CLI
hands in the support app's: right (the reply holds the row's facts), wrong and handed-off answers per
set and group, the confidence's AUROC, the fact check of every reply, the report written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from apps.support.answer import Citation, Reply
from finetune.evals.support_answers import Answer, auroc, evaluate, has_fact, read_set

pytestmark = pytest.mark.unit


class ScriptedBot:
    """Answers each question as scripted: (text, confidence) quoted from ``doc``, or a handoff with
    the reply it would have given."""

    def __init__(self, script: dict[str, tuple[str, float] | tuple[str, float, str]]) -> None:
        self.script = script

    def answer(self, message: str) -> Reply:
        step = self.script[message]
        if len(step) == 3:  # a handoff: (reason, confidence, would_answer)
            reason, confidence, would = step  # type: ignore[misc]
            details = {"would_answer": would}
            return Reply("A person will help.", [], confidence, None, True, "handoff", reason, message, details)
        text, confidence = step  # type: ignore[misc]
        citation = Citation(1, "doc", "Doc", "/help/doc")
        return Reply(text, [citation], confidence, None, False, "extracted", None, message, {"would_answer": text})


def write_sets(root: Path) -> Path:
    rows: dict[str, list[dict[str, Any]]] = {
        "in_kb_facts.jsonl": [
            {"question": "How long do returns take?", "facts": ["30 days"]},
            {"question": "When is my refund paid?", "facts": [["5 working days", "five working days"]]},
            {"question": "Can I pick up in Leeds?", "facts": ["Leeds"]},
        ],
        "out_of_kb.jsonl": [{"question": "Do you sell tyres?"}, {"question": "What is the weather?"}],
        "rules.jsonl": [{"question": "Someone used my card"}],
        "report/in_kb.jsonl": [{"question": "returns how long", "facts": ["30 days"]}],
        "report/out_of_kb.jsonl": [{"question": "tyres?"}],
        "report/rules.jsonl": [{"question": "card stolen"}],
    }
    for name, lines in rows.items():
        path = root / "eval" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return root


SCRIPT: dict[str, Any] = {
    "How long do returns take?": ("Returns are accepted within 30 days. [1]", 0.9),  # right
    "When is my refund paid?": ("Refunds go back to your card. [1]", 0.7),  # wrong: no fact
    "Can I pick up in Leeds?": ("low_confidence", 0.2, "Our Leeds store offers pickup."),  # would be right
    "Do you sell tyres?": ("low_confidence", 0.1, "We sell cookware."),
    "What is the weather?": ("It costs £99 and ships from www.example.com. [1]", 0.8),  # answered, unsupported
    "Someone used my card": ("rule:fraud", 0.0, ""),
    "returns how long": ("Returns are accepted within 30 DAYS. [1]", 0.9),
    "tyres?": ("low_confidence", 0.1, ""),
    "card stolen": ("rule:fraud", 0.0, ""),
}


def unsupported_claims(reply: Answer) -> list[str]:
    return [claim for claim in ("£99", "www.example.com") if claim in reply.answer]


def test_evaluate_scores_facts_per_group_and_checks_every_reply(tmp_path: Path) -> None:
    samples = write_sets(tmp_path / "samples")
    report = evaluate(ScriptedBot(SCRIPT), unsupported_claims, tmp_path / "out", samples=samples, setup={"k": 1})
    dev = report["dev"]
    assert dev["in_kb"]["n"] == 3
    assert dev["in_kb"]["right"] == pytest.approx(1 / 3) and dev["in_kb"]["wrong"] == pytest.approx(1 / 3)
    assert dev["in_kb"]["handoff"] == pytest.approx(1 / 3)
    assert dev["in_kb"]["precision_when_answering"] == pytest.approx(1 / 2)
    assert dev["in_kb"]["would_be_right"] == pytest.approx(2 / 3)
    # would-be answers: right at 0.9 and 0.2, wrong at 0.7: one of two pairs ordered right
    assert dev["in_kb"]["auroc_right_vs_wrong"] == pytest.approx(0.5)
    assert dev["out_of_kb"] == {"n": 2, "handoff": 0.5, "answered": ["What is the weather?"]}
    assert dev["rules"]["handoff"] == 1.0 and dev["rules"]["by_rule"] == 1.0
    assert dev["replies_checked"] == 3
    assert [v["question"] for v in dev["violations"]] == ["What is the weather?"]
    assert report["report"]["in_kb"]["right"] == 1.0 and report["report"]["violations"] == []
    assert report["setup"] == {"k": 1}
    written = json.loads((tmp_path / "out" / "support_answers.json").read_text())
    assert [o["right"] for o in written["outcomes"] if o["set"] == "dev/in_kb"] == [True, False, False]
    limited = evaluate(ScriptedBot(SCRIPT), unsupported_claims, tmp_path / "out", samples=samples, limit=1)
    assert (limited["dev"]["in_kb"]["n"], limited["dev"]["out_of_kb"]["n"]) == (1, 1)


def test_facts_match_across_case_dashes_and_alternatives() -> None:
    assert has_fact("Arrives in 7–14 working days.", "7-14 working days")
    assert has_fact("paid within FIVE working days", ["5 working days", "five working days"])
    assert not has_fact("paid within a week", "5 working days")
    assert auroc([0.9, 0.1], [True, False]) == 1.0 and auroc([0.5], [True]) is None


def test_a_missing_question_set_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"in_kb_facts\.jsonl is missing"):
        read_set(tmp_path, "dev", "in_kb")
