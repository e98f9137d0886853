"""The TALLRec prompt the recommend adapter is trained on (``finetune/data/recommend.py``), split for
shared-prefix scoring.

Training renders ``system = INSTRUCTION`` and ``user = history_text + target_text`` through the chat
template. Here the same rendering is cut inside the target sentence, after "... the target movie":
the history and those words are the prefix (computed once per request), and each candidate's
continuation is its quoted title plus the rest of the template up to where the assistant answers, so the next-token distribution after it is the
one the adapter was trained to put on "Yes"/"No". The wording stays the trained one ("target movie")
even for products: the adapter knows that sentence; a test pins it to the training module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.prompts import render_chat

INSTRUCTION = (
    "Given the user's preference and unpreference, identify whether the user will like the target movie "
    'by answering "Yes." or "No.".'
)
LABELS = ["Yes", "No"]
_CUT = "\x00TARGET\x00"


def _quote(title: str) -> str:
    return f'"{title}"'  # as in training, inner quotes and all


def history_text(liked: Sequence[str], disliked: Sequence[str]) -> str:
    return (
        f"User Preference: {', '.join(_quote(t) for t in liked)}\n"
        f"User Unpreference: {', '.join(_quote(t) for t in disliked)}\n"
    )


TARGET_LEAD = "Whether the user will like the target movie"


def target_text(title: str) -> str:
    return f"{TARGET_LEAD} {_quote(title)}?"


@dataclass(frozen=True)
class SplitPrompt:
    prefix: str  # the rendered prompt up to and including TARGET_LEAD
    tail: str  # the template after the user's text (end of turn, assistant header)

    def continuation(self, title: str) -> str:
        return f" {_quote(title)}?" + self.tail


def split_prompt(
    tokenizer: Any, liked: Sequence[str], disliked: Sequence[str], instruction: str = INSTRUCTION
) -> SplitPrompt:
    messages = [
        {"role": "system", "content": instruction},
        {"role": "user", "content": history_text(liked, disliked) + _CUT},
    ]
    rendered = render_chat(tokenizer, messages)
    prefix, tail = rendered.split(_CUT, 1)
    # The cut sits at a word boundary (" movie" | ' "Title'), so prefix tokens + continuation tokens
    # equal the whole prompt's tokens. Cutting before "Whether" would not: BPE merges a closing quote
    # with the newline after it ('"\n'), so a prefix ending in '"\n' tokenises differently alone.
    return SplitPrompt(prefix=prefix + TARGET_LEAD, tail=tail)
