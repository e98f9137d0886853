"""Amazon Video Games, as LLMRank prepared it (``Games-6k``; shared data
``recsys/amazon-games-llmrank``): the one reader, and the split of its sequences.

Files (RecBole atomic files, tab-separated, one header row):

    Games-6k.item         item_id:token  title:token_seq            16,859 product titles
    Games-6k.valid.inter  user_id:token  item_id_list:token_seq  item_id:token
                          each user's purchases in order (ids separated by spaces), then the next one

A user's sequence is the history and then the next item: ``valid.inter``'s target is the last item
we have (the test file, the item after it, is held out from this project). There are no timestamps
and no ratings: each purchase is an event of type ``purchase`` whose ``ts`` is its position in the
user's sequence, so the order is kept and nothing else is claimed.

The split (``split_games``), deterministic and the same for every system:

    fit     every user's sequence less its last item: what every model, signal and adapter learns from
    dev     a tenth of the users, by a hash of the user id: their last items tune (the blend, the LLM
            weight, the adapter's checkpoint, baseline settings)
    report  the other users: their last items are reported, never tuned on
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from domains.recommend.records import Event, Item
from domains.records import DataFileError, require_file, row_error

ITEM_FILE = "Games-6k.item"
INTER_FILE = "Games-6k.valid.inter"
DATA_SUBDIR = "recsys/amazon-games-llmrank"
DEV_SHARE = 0.10  # of users, by hash: their last items tune, the rest report
MIN_SEQUENCE = 3  # a history of two and a target: anything shorter cannot be split


@dataclass
class Games:
    titles: dict[str, str]  # item id -> product title
    sequences: dict[str, list[str]]  # user id -> item ids, oldest first; the last is the valid target

    def items(self) -> dict[str, Item]:
        """Titles as catalogue items: the catalogue has no category, price or description."""
        return {i: Item(i, t) for i, t in self.titles.items()}

    def users(self) -> list[str]:
        return sorted(self.sequences, key=_id_key)


@dataclass
class GamesSplit:
    """Leave-one-out by position: ``history[u]`` is the user's sequence less the last item,
    ``target[u]`` that last item; ``dev`` and ``report`` partition the users."""

    history: dict[str, list[str]]
    target: dict[str, str]
    dev: list[str] = field(default_factory=list)
    report: list[str] = field(default_factory=list)

    def events(self) -> dict[str, list[Event]]:
        """user -> purchase events of the history, oldest first (``ts`` is the position)."""
        return {u: purchase_events(u, items) for u, items in self.history.items()}


def purchase_events(user: str, items: list[str]) -> list[Event]:
    return [Event(user, item, "purchase", float(n)) for n, item in enumerate(items)]


def _id_key(value: str) -> tuple[int, str]:
    return (int(value), "") if value.isdigit() else (1 << 62, value)


def _lines(path: Path, columns: int) -> list[tuple[int, list[str]]]:
    require_file(path, "Games-6k file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})", path=str(path)) from None
    out = []
    for n, line in enumerate(text.splitlines()[1:], start=2):  # line 1 is the header
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != columns:
            raise row_error(path, n, f"expected {columns} tab-separated fields, found {len(parts)}")
        out.append((n, [p.strip() for p in parts]))
    if not out:
        raise DataFileError(f"{path}: no rows", path=str(path))
    return out


def read_games(folder: Path) -> Games:
    """The titles and each user's sequence (history then the valid target). Raises
    ``DataFileError`` naming the file and line of a bad row, or a missing file."""
    item_path, inter_path = folder / ITEM_FILE, folder / INTER_FILE
    if not folder.is_dir():
        raise DataFileError(
            f"{folder} is missing: Games-6k is read from DOMAINLLM_SHARED_DATA_DIR/{DATA_SUBDIR} "
            "(not shipped with the project)",
            path=str(folder),
        )
    titles: dict[str, str] = {}
    for n, (item, title) in _lines(item_path, 2):
        if not item or not title:
            raise row_error(item_path, n, "an item needs an id and a title")
        titles[item] = title
    sequences: dict[str, list[str]] = {}
    for n, (user, history, target) in _lines(inter_path, 3):
        sequence = [*history.split(), target]
        unknown = [i for i in sequence if i not in titles]
        if unknown:
            raise row_error(inter_path, n, f"item {unknown[0]!r} is not in {ITEM_FILE}")
        if user in sequences:
            raise row_error(inter_path, n, f"user {user!r} appears twice")
        sequences[user] = sequence
    return Games(titles, sequences)


def is_dev_user(user: str, share: float = DEV_SHARE) -> bool:
    """A fixed tenth of users, whatever the file order: a hash of the id, not a draw."""
    digest = hashlib.blake2b(user.encode(), digest_size=8, person=b"games-dev").digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def split_games(games: Games, dev_share: float = DEV_SHARE) -> GamesSplit:
    """Each user's last item held out; users with fewer than ``MIN_SEQUENCE`` items dropped."""
    split = GamesSplit({}, {})
    for user in games.users():
        sequence = games.sequences[user]
        if len(sequence) < MIN_SEQUENCE:
            continue
        split.history[user] = sequence[:-1]
        split.target[user] = sequence[-1]
        (split.dev if is_dev_user(user, dev_share) else split.report).append(user)
    return split
