"""The TALLRec prompt: what the recommend adapters are trained on and how they are served.

    system  INSTRUCTION
    user    User Preference: "Heat (1995)", "Alien (1979)"
            User Unpreference: "Cats (2019)"
            Whether the user will like the target movie "Up (2009)"?
    answer  Yes / No (the first-token distribution over LABELS)

Training renders the whole prompt (``render_prompt``); serving scores it in two parts
(``split_prompt``): the history and the words up to "... the target movie" are one prefix per
request, and each candidate's quoted title plus the rest of the template up to where the assistant
answers is a continuation over that prefix's cache. Both sides take ``render`` (chat messages -> the
string the model reads): serving passes ``engine.render``, training
``lambda m: render_chat(tokenizer, m)``. The wording stays the trained one ("target movie") even for
products: the adapter knows that sentence.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.prompts import Message

INSTRUCTION = (
    "Given the user's preference and unpreference, identify whether the user will like the target movie "
    'by answering "Yes." or "No.".'
)
POSITIVE, NEGATIVE = "Yes", "No"
LABELS = [POSITIVE, NEGATIVE]
TARGET_LEAD = "Whether the user will like the target movie"
HISTORY = 10  # titles in the prompt: the ratings just before the target
LIKED_ABOVE = 3.0  # TALLRec: a rating above 3 is a like, 3 and below a dislike

Render = Callable[[list[Message]], str]
_CUT = "\x00TARGET\x00"


def quote(title: str) -> str:
    return f'"{title}"'  # inner quotes and all, as TALLRec writes them


def history_text(liked: Sequence[str], disliked: Sequence[str]) -> str:
    return (
        f"User Preference: {', '.join(quote(t) for t in liked)}\n"
        f"User Unpreference: {', '.join(quote(t) for t in disliked)}\n"
    )


def target_text(title: str) -> str:
    return f"{TARGET_LEAD} {quote(title)}?"


def messages(text: str, instruction: str = INSTRUCTION) -> list[Message]:
    return [{"role": "system", "content": instruction}, {"role": "user", "content": text}]


@dataclass(frozen=True)
class PreferencePrompt:
    """One row: the liked and disliked titles (oldest first), the target and its answer."""

    liked: tuple[str, ...]
    disliked: tuple[str, ...]
    target: str
    label: str  # "Yes" or "No"

    def history_text(self) -> str:
        return history_text(self.liked, self.disliked)

    def target_text(self) -> str:
        return target_text(self.target)

    def text(self) -> str:
        return self.history_text() + self.target_text()


def render_prompt(render: Render, row: PreferencePrompt, instruction: str = INSTRUCTION) -> str:
    """The whole prompt as training renders it."""
    return render(messages(row.text(), instruction))


@dataclass(frozen=True)
class SplitPrompt:
    prefix: str  # the rendered prompt up to and including TARGET_LEAD
    tail: str  # the template after the user's text (end of turn, assistant header)

    def continuation(self, title: str) -> str:
        return f" {quote(title)}?" + self.tail


def split_prompt(
    render: Render, liked: Sequence[str], disliked: Sequence[str], instruction: str = INSTRUCTION
) -> SplitPrompt:
    """The prompt cut after TARGET_LEAD: ``prefix + continuation(title)`` is ``render_prompt`` of that row.

    The cut sits at a word boundary (" movie" | ' "Title'), so the prefix's tokens followed by a
    continuation's tokens are the whole prompt's tokens. Cutting before "Whether" would not be: BPE
    merges a closing quote with the newline after it ('"\\n'), so a prefix ending in '"\\n'
    tokenises differently alone."""
    rendered = render(messages(history_text(liked, disliked) + _CUT, instruction))
    prefix, tail = rendered.split(_CUT, 1)
    return SplitPrompt(prefix=prefix + TARGET_LEAD, tail=tail)


def split_window(
    window: Sequence[tuple[str, float | None]], history: int = HISTORY, liked_above: float = LIKED_ABOVE
) -> tuple[list[str], list[str]]:
    """(liked, disliked) titles of the last ``history`` entries of ``window`` (title, rating or None;
    oldest first). A rating above ``liked_above`` is a like; an entry without a rating (a view, a
    purchase) counts as liked."""
    recent = list(window)[-history:] if history > 0 else []
    liked = [t for t, r in recent if r is None or r > liked_above]
    disliked = [t for t, r in recent if r is not None and r <= liked_above]
    return liked, disliked


# ---- the public TALLRec prompts (tallrec-prompts/movie/*.json) -----------------------------------

_QUOTED = re.compile(r'"([^"]+)"')


def read_tallrec(path: Path) -> list[PreferencePrompt]:
    """TALLRec's instruction-tuning rows ({"input": the prompt text, "output": "Yes." / "No."})."""
    rows = []
    for item in json.loads(path.read_text()):
        pref, rest = item["input"].split("User Unpreference:", 1)
        unpref, target = rest.split("Whether the user will like the target", 1)
        [title] = _QUOTED.findall(target)[:1] or [""]
        rows.append(
            PreferencePrompt(
                liked=tuple(_QUOTED.findall(pref)),
                disliked=tuple(_QUOTED.findall(unpref)),
                target=title,
                label=POSITIVE if item["output"].strip().lower().startswith("yes") else NEGATIVE,
            )
        )
    return rows
