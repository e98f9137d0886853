"""The recommend prompt: what the recommend adapters are trained on and how they are served.

Two wordings of one template (``Wording``). TALLRec's, for the MovieLens adapters:

    system  Given the user's preference and unpreference, identify whether the user will like the
            target movie by answering "Yes." or "No.".
    user    User Preference: "Heat (1995)", "Alien (1979)"
            User Unpreference: "Cats (2019)"
            Whether the user will like the target movie "Up (2009)"?
    answer  Yes / No (the first-token distribution over LABELS)

and the product wording, for a shop's catalogue (the Games adapter, a store's own adapter):

    system  Given the products a shopper chose, oldest first, and any they disliked, identify whether
            the shopper will choose the target product next by answering "Yes." or "No.".
    user    Products the shopper chose: "Mario Kart 8 - Wii U", "Wii U Pro Controller"
            Whether the shopper will choose the target product "Splatoon - Wii U" next?

An item is named by the catalogue's own fields (``item_text``): its title, and its category and
price when the adapter was trained with them (the card's ``item_fields``).

Training renders the whole prompt (``render_prompt``); serving scores it in two parts
(``split_prompt``): the history and the words up to the target lead are one prefix per request, and
each candidate's quoted name plus the rest of the template up to where the assistant answers is a
continuation over that prefix's cache. Both sides take ``render`` (chat messages -> the string the
model reads): serving passes ``engine.render``, training ``lambda m: render_chat(tokenizer, m)``.
An adapter is always asked in the wording it was trained on (its card's ``serving`` section).
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
MAX_TITLE_CHARS = 120  # a few catalogue titles run to 700 characters of keywords
ITEM_FIELDS = ("title", "category", "price")  # what ``item_text`` may name, in this order

Render = Callable[[list[Message]], str]
_CUT = "\x00TARGET\x00"


@dataclass(frozen=True)
class Wording:
    """The words of the template around the titles. ``target_lead`` ends on a word, so the prompt can
    be cut after it at a token boundary (``split_prompt``); ``always_disliked``: write the disliked
    line even when it is empty (TALLRec does)."""

    name: str
    instruction: str
    liked_lead: str
    disliked_lead: str
    target_lead: str
    target_end: str = "?"
    always_disliked: bool = True

    def __post_init__(self) -> None:
        if not self.target_lead.strip() or self.target_lead != self.target_lead.rstrip():
            raise ValueError("the target lead must end on a word (the prompt is cut after it)")
        if not self.instruction.strip() or not self.liked_lead.strip():
            raise ValueError("a wording needs an instruction and a lead for the history")


MOVIE = Wording("movie", INSTRUCTION, "User Preference:", "User Unpreference:", TARGET_LEAD)
PRODUCT = Wording(
    "product",
    "Given the products a shopper chose, oldest first, and any they disliked, identify whether the shopper "
    'will choose the target product next by answering "Yes." or "No.".',
    "Products the shopper chose:",
    "Products the shopper disliked:",
    "Whether the shopper will choose the target product",
    target_end=" next?",
    always_disliked=False,
)
WORDINGS = {w.name: w for w in (MOVIE, PRODUCT)}


def quote(title: str) -> str:
    return f'"{title}"'  # inner quotes and all, as TALLRec writes them


def item_text(title: str, category: str = "", price: float | None = None, fields: Sequence[str] = ("title",)) -> str:
    """How the prompt names an item: its title (cut at MAX_TITLE_CHARS), then its category and
    price in brackets when ``fields`` asks for them and the catalogue has them."""
    name = title if len(title) <= MAX_TITLE_CHARS else title[:MAX_TITLE_CHARS].rstrip() + "..."
    extra = []
    if "category" in fields and category:
        extra.append(category)
    if "price" in fields and price is not None:
        extra.append(f"{price:.2f}")
    return f"{name} ({', '.join(extra)})" if extra else name


def history_text(liked: Sequence[str], disliked: Sequence[str], wording: Wording = MOVIE) -> str:
    text = f"{wording.liked_lead} {', '.join(quote(t) for t in liked)}\n"
    if disliked or wording.always_disliked:
        text += f"{wording.disliked_lead} {', '.join(quote(t) for t in disliked)}\n"
    return text


def target_text(title: str, wording: Wording = MOVIE) -> str:
    return f"{wording.target_lead} {quote(title)}{wording.target_end}"


def messages(text: str, instruction: str = INSTRUCTION) -> list[Message]:
    return [{"role": "system", "content": instruction}, {"role": "user", "content": text}]


@dataclass(frozen=True)
class PreferencePrompt:
    """One row: the liked and disliked titles (oldest first), the target and its answer."""

    liked: tuple[str, ...]
    disliked: tuple[str, ...]
    target: str
    label: str  # "Yes" or "No"

    def history_text(self, wording: Wording = MOVIE) -> str:
        return history_text(self.liked, self.disliked, wording)

    def target_text(self, wording: Wording = MOVIE) -> str:
        return target_text(self.target, wording)

    def text(self, wording: Wording = MOVIE) -> str:
        return self.history_text(wording) + self.target_text(wording)


def render_prompt(
    render: Render, row: PreferencePrompt, instruction: str | None = None, wording: Wording = MOVIE
) -> str:
    """The whole prompt as training renders it (``instruction``: the wording's unless given)."""
    return render(messages(row.text(wording), instruction or wording.instruction))


@dataclass(frozen=True)
class SplitPrompt:
    prefix: str  # the rendered prompt up to and including the wording's target lead
    tail: str  # the template after the user's text (end of turn, assistant header)
    target_end: str = "?"

    def continuation(self, title: str) -> str:
        return f" {quote(title)}{self.target_end}" + self.tail


def split_prompt(
    render: Render,
    liked: Sequence[str],
    disliked: Sequence[str],
    instruction: str | None = None,
    wording: Wording = MOVIE,
) -> SplitPrompt:
    """The prompt cut after the target lead: ``prefix + continuation(title)`` is ``render_prompt`` of
    that row.

    The cut sits at a word boundary (" movie" | ' "Title'), so the prefix's tokens followed by a
    continuation's tokens are the whole prompt's tokens. Cutting before "Whether" would not be: BPE
    merges a closing quote with the newline after it ('"\\n'), so a prefix ending in '"\\n'
    tokenises differently alone."""
    text = history_text(liked, disliked, wording) + _CUT
    rendered = render(messages(text, instruction or wording.instruction))
    prefix, tail = rendered.split(_CUT, 1)
    return SplitPrompt(prefix=prefix + wording.target_lead, tail=tail, target_end=wording.target_end)


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
