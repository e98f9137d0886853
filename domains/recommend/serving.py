"""The recommend adapters' ``serving`` section of the adapter card: training writes it
(``serving_section``), the scorer reads it back (``read_serving``) and prompts the adapter exactly so.

A card written before a key existed (the first adapters carry only instruction and labels) reads
as the defaults below, which are what those adapters were trained with: TALLRec's movie wording
and titles alone. A model with no card at all (the base model) is asked in the wording its caller
names (the storefront's scorer: the product wording).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from domains.recommend.prompt import HISTORY, ITEM_FIELDS, LABELS, LIKED_ABOVE, MOVIE, POSITIVE, Wording

# the adapter whose P("Yes") ranks the storefront's shortlist: a shop sells products, so the one
# trained on products in the product wording (Amazon Games, finetune/configs/recommend-games.yaml)
RANKING_ADAPTER = "recommend-games"
# the MovieLens ranking evaluation's adapter (TALLRec's movie wording, finetune/configs/recommend-next.yaml)
MOVIELENS_ADAPTER = "recommend-next"
METHOD = "score_continuations(split_prompt(...), answer_labels=labels) or score_labels(text, labels)"


@dataclass(frozen=True)
class RecommendServing:
    """How to prompt one recommend adapter: the instruction, the answer labels and which of them
    means "recommend", the history window (titles, and where a rating starts to count as liked),
    the wording around the titles, and which catalogue fields name an item."""

    instruction: str = MOVIE.instruction
    labels: tuple[str, ...] = field(default_factory=lambda: tuple(LABELS))
    positive: str = POSITIVE
    history: int = HISTORY
    liked_above: float = LIKED_ABOVE
    wording: Wording = MOVIE
    item_fields: tuple[str, ...] = ("title",)

    def __post_init__(self) -> None:
        if not self.instruction.strip():
            raise ValueError("the instruction must not be empty")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be two or more distinct words, got {list(self.labels)}")
        if self.positive not in self.labels:
            raise ValueError(f"the positive label {self.positive!r} is not one of {list(self.labels)}")
        if not 1 <= self.history <= 100:
            raise ValueError(f"history must be between 1 and 100 titles, got {self.history}")
        if "title" not in self.item_fields or set(self.item_fields) - set(ITEM_FIELDS):
            raise ValueError(f"item_fields must hold title and only {', '.join(ITEM_FIELDS)}, got {self.item_fields}")

    def prompt_shape(self) -> str:
        w = self.wording
        shape = f"{w.liked_lead} <quoted titles>\\n"
        shape += (
            f"{w.disliked_lead} <quoted titles>\\n" if w.always_disliked else f"[{w.disliked_lead} <quoted titles>\\n]"
        )
        return shape + f'{w.target_lead} "<title>"{w.target_end}'


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
        "wording": asdict(serving.wording),
        "item_fields": list(serving.item_fields),
        "prompt": serving.prompt_shape(),
    }


def read_serving(
    section: Mapping[str, Any] | None, *, history: int = HISTORY, wording: Wording = MOVIE
) -> RecommendServing:
    """The section read back; a key the card lacks takes its default (``history`` and ``wording``:
    the caller's, for a model with no card at all, such as the base model; an adapter whose card
    predates the key was trained with TALLRec's movie wording). Raises ``ValueError`` on a section
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
        raw_wording = section.get("wording")
        if raw_wording is not None:
            if not isinstance(raw_wording, Mapping):
                raise ValueError(f"wording must be an object, got {raw_wording!r}")
            wording = Wording(**{k: raw_wording[k] for k in raw_wording})
        elif section:  # a card from before the product wording: TALLRec's, as those adapters were trained
            wording = MOVIE
        raw_fields = get("item_fields", ["title"])
        if isinstance(raw_fields, str) or not isinstance(raw_fields, list | tuple):
            raise ValueError(f"item_fields must be a list, got {raw_fields!r}")
        return RecommendServing(
            instruction=str(get("instruction", wording.instruction)),
            labels=labels,
            positive=str(get("positive", POSITIVE if POSITIVE in labels else labels[0] if labels else POSITIVE)),
            history=int(get("history", history)),
            liked_above=float(get("liked_above", LIKED_ABOVE)),
            wording=wording,
            item_fields=tuple(str(f) for f in raw_fields),
        )
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"the adapter card's serving section is not usable: {exc}") from exc
