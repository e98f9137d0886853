"""Entities and tickers from a watchlist: name variants -> ticker, matched on word boundaries.

Two sources: the project's YAML (``{TICKER: [variant, ...]}``) and the SEntFiN layout
(``Symbol,Entity`` with the variants comma-separated in one field). Variants written in capitals
(tickers, acronyms such as "BPCL" or "GSK") match case-sensitively, so "ACE" the ticker is not "ace"
the word; all other variants match in any case. One alternation, longest variant first, so
"Tata Motors Finance" wins over "Tata Motors".
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from core.errors import InvalidRequestError


@dataclass(frozen=True)
class EntityMatch:
    ticker: str
    name: str  # the text as it appears in the headline
    start: int
    end: int


def _is_acronym(variant: str) -> bool:
    letters = [c for c in variant if c.isalpha()]
    return bool(letters) and all(c.isupper() for c in letters) and len(variant) <= 12


class Watchlist:
    def __init__(self, variants: dict[str, list[str]]) -> None:
        self.tickers = sorted(variants)
        self._exact: dict[str, str] = {}
        self._folded: dict[str, str] = {}
        for ticker, names in variants.items():
            for name in {ticker, *names}:
                name = " ".join(name.split())
                if len(name) < 2:
                    continue
                if _is_acronym(name):
                    self._exact.setdefault(name, ticker)
                else:
                    self._folded.setdefault(name.casefold(), ticker)
        self._exact_re = self._compile(self._exact, 0)
        self._folded_re = self._compile(self._folded, re.IGNORECASE)

    @staticmethod
    def _compile(names: dict[str, str], flags: int) -> re.Pattern[str] | None:
        if not names:
            return None
        alternation = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
        return re.compile(rf"(?<![\w&])(?:{alternation})(?![\w&])", flags)

    def variants(self) -> list[str]:
        """Every name that is matched (exact-case ones as written, the others case-folded)."""
        return [*self._exact, *self._folded]

    def __len__(self) -> int:
        return len(self.tickers)

    def match(self, text: str) -> list[EntityMatch]:
        """Non-overlapping matches, longest first where two overlap, in text order."""
        found: list[EntityMatch] = []
        for pattern, table, fold in ((self._exact_re, self._exact, False), (self._folded_re, self._folded, True)):
            if pattern is None:
                continue
            for m in pattern.finditer(text):
                key = m.group(0).casefold() if fold else m.group(0)
                key = " ".join(key.split())
                if key in table:
                    found.append(EntityMatch(table[key], m.group(0), m.start(), m.end()))
        found.sort(key=lambda e: (e.start, -(e.end - e.start)))
        out: list[EntityMatch] = []
        for e in found:
            if not out or e.start >= out[-1].end:
                out.append(e)
        return out

    def tickers_in(self, text: str) -> list[str]:
        return list(dict.fromkeys(m.ticker for m in self.match(text)))

    # ---- loading -----------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: Path) -> Watchlist:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
            raise InvalidRequestError(f"cannot read watchlist {path}: {exc}") from exc
        entities = raw.get("entities", raw) if isinstance(raw, dict) else None
        if not isinstance(entities, dict) or any(not isinstance(v, list) for v in entities.values()):
            raise InvalidRequestError(f"watchlist {path}: expected 'entities: {{TICKER: [name, ...]}}'")
        return cls({str(k): [str(v) for v in vs] for k, vs in entities.items()})

    @classmethod
    def from_csv(cls, path: Path) -> Watchlist:
        """The SEntFiN entity list: a ``Symbol`` column and an ``Entity`` column of variants."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidRequestError(f"cannot read watchlist {path}: {exc}") from exc
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or not {"Symbol", "Entity"} <= set(reader.fieldnames):
            raise InvalidRequestError(f"watchlist {path}: the CSV needs 'Symbol' and 'Entity' columns")
        variants: dict[str, list[str]] = {}
        for row in reader:
            symbol = (row.get("Symbol") or "").strip()
            if symbol:
                names = [v.strip() for v in (row.get("Entity") or "").split(",") if v.strip()]
                variants.setdefault(symbol, []).extend(names)
        return cls(variants)

    @classmethod
    def empty(cls) -> Watchlist:
        return cls({})
