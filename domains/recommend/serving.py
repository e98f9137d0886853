"""The recommend adapters' ``serving`` section of the adapter card: training writes it
(``serving_section``), the scorer reads it back (``read_serving``) and prompts the adapter exactly so.

A card written before a key existed (the first adapters carry only instruction and labels) reads
as the defaults below, which are what those adapters were trained with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from domains.recommend.prompt import HISTORY, INSTRUCTION, LABELS, LIKED_ABOVE, POSITIVE, TARGET_LEAD

RANKING_ADAPTER = "recommend-next"  # the adapter whose P("Yes") ranks the storefront's shortlist (finetune/configs)
METHOD = "score_continuations(split_prompt(...), answer_labels=labels) or score_labels(text, labels)"
PROMPT_SHAPE = (
    f'User Preference: <quoted liked titles>\\nUser Unpreference: <quoted disliked titles>\\n{TARGET_LEAD} "<title>"?'
)


@dataclass(frozen=True)
class RecommendServing:
    """How to prompt one recommend adapter: the instruction, the answer labels and which of them
    means "recommend", and the history window (titles, and where a rating starts to count as liked)."""

    instruction: str = INSTRUCTION
    labels: tuple[str, ...] = field(default_factory=lambda: tuple(LABELS))
    positive: str = POSITIVE
    history: int = HISTORY
    liked_above: float = LIKED_ABOVE

    def __post_init__(self) -> None:
        if not self.instruction.strip():
            raise ValueError("the instruction must not be empty")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be two or more distinct words, got {list(self.labels)}")
        if self.positive not in self.labels:
            raise ValueError(f"the positive label {self.positive!r} is not one of {list(self.labels)}")
        if not 1 <= self.history <= 100:
            raise ValueError(f"history must be between 1 and 100 titles, got {self.history}")


def serving_section(serving: RecommendServing, *, objective: str = "like") -> dict[str, Any]:
    """The card's ``serving`` section for an adapter trained with ``serving``."""
    return {
        "method": METHOD,
        "objective": objective,  # "like" (TALLRec: will the user like it) or "next_item"
        "instruction": serving.instruction,
        "labels": list(serving.labels),
        "positive": serving.positive,
        "history": serving.history,
        "liked_above": serving.liked_above,
        "prompt": PROMPT_SHAPE,
    }


def read_serving(section: Mapping[str, Any] | None, *, history: int = HISTORY) -> RecommendServing:
    """The section read back; a key the card lacks takes its default (``history``: the caller's,
    for a model with no card at all, such as the base model). Raises ``ValueError`` on a section
    that names impossible values."""
    section = section or {}

    def get(key: str, default: Any) -> Any:
        value = section.get(key)
        return default if value is None else value

    try:
        raw_labels = get("labels", LABELS)
        if isinstance(raw_labels, str) or not isinstance(raw_labels, list | tuple):
            raise ValueError(f"labels must be a list, got {raw_labels!r}")
        labels = tuple(str(label) for label in raw_labels)
        return RecommendServing(
            instruction=str(get("instruction", INSTRUCTION)),
            labels=labels,
            positive=str(get("positive", POSITIVE if POSITIVE in labels else labels[0] if labels else POSITIVE)),
            history=int(get("history", history)),
            liked_above=float(get("liked_above", LIKED_ABOVE)),
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the adapter card's serving section is not usable: {exc}") from exc
