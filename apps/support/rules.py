"""Rules that steer the bot, from a YAML file (``rules/default.yaml``): topics that always hand off
to a person, phrases the bot must never say, and canned answers.

A rule file with an unknown key, an empty pattern list or a regular expression that does not
compile fails at load with a message naming the rule, so a bad deploy stops before serving.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.errors import InvalidRequestError


class RulesError(InvalidRequestError):
    """A rules file that cannot be used; the message names the file and the rule."""

    error_type = "invalid_rules"


@dataclass(frozen=True)
class HandoffTopic:
    name: str
    patterns: tuple[re.Pattern[str], ...]
    intents: frozenset[str]

    def matches(self, text: str, intent: str | None) -> bool:
        return (intent is not None and intent in self.intents) or any(p.search(text) for p in self.patterns)


@dataclass(frozen=True)
class Canned:
    name: str
    patterns: tuple[re.Pattern[str], ...]
    answer: str


@dataclass(frozen=True)
class Banned:
    name: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class Rules:
    handoff_message: str
    topics: tuple[HandoffTopic, ...]
    never_say: tuple[Banned, ...]
    canned: tuple[Canned, ...]

    def handoff_topic(self, text: str, intent: str | None = None) -> str | None:
        """The first topic that always hands off and matches the message (or its intent)."""
        return next((t.name for t in self.topics if t.matches(text, intent)), None)

    def canned_answer(self, text: str) -> Canned | None:
        return next((c for c in self.canned if any(p.search(text) for p in c.patterns)), None)

    def violations(self, answer: str) -> list[str]:
        """Names of the never-say rules that ``answer`` breaks."""
        return [b.name for b in self.never_say if b.pattern.search(answer)]


def _compile(pattern: Any, where: str) -> re.Pattern[str]:
    if not isinstance(pattern, str) or not pattern.strip():
        raise RulesError(f"{where}: a pattern must be a non-empty string")
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise RulesError(f"{where}: pattern {pattern!r} does not compile: {exc}") from exc


def _patterns(raw: Any, where: str) -> tuple[re.Pattern[str], ...]:
    if not isinstance(raw, list):
        raise RulesError(f"{where}: 'patterns' must be a list")
    return tuple(_compile(p, where) for p in raw)


def _keys(raw: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: expected a mapping")
    unknown = set(raw) - allowed
    if unknown:
        raise RulesError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    return raw


def parse_rules(raw: Any, source: str = "rules") -> Rules:
    top = _keys(raw, {"handoff_message", "handoff_topics", "never_say", "canned"}, source)
    message = top.get("handoff_message")
    if not isinstance(message, str) or not message.strip():
        raise RulesError(f"{source}: 'handoff_message' must be a non-empty string")
    topics = []
    for name, spec in (top.get("handoff_topics") or {}).items():
        where = f"{source}: handoff topic {name!r}"
        spec = _keys(spec, {"patterns", "intents"}, where)
        patterns = _patterns(spec.get("patterns", []), where)
        intents = frozenset(str(i) for i in spec.get("intents", []) or [])
        if not patterns and not intents:
            raise RulesError(f"{where}: needs patterns or intents")
        topics.append(HandoffTopic(str(name), patterns, intents))
    banned = []
    for i, spec in enumerate(top.get("never_say") or []):
        spec = _keys(spec, {"name", "pattern"}, f"{source}: never_say #{i + 1}")
        name = str(spec.get("name") or f"never_say_{i + 1}")
        banned.append(Banned(name, _compile(spec.get("pattern"), f"{source}: never_say {name!r}")))
    canned = []
    for i, spec in enumerate(top.get("canned") or []):
        spec = _keys(spec, {"name", "patterns", "answer"}, f"{source}: canned #{i + 1}")
        name = str(spec.get("name") or f"canned_{i + 1}")
        answer = spec.get("answer")
        if not isinstance(answer, str) or not answer.strip():
            raise RulesError(f"{source}: canned {name!r} needs a non-empty 'answer'")
        canned.append(Canned(name, _patterns(spec.get("patterns", []), f"{source}: canned {name!r}"), answer.strip()))
    return Rules(message.strip(), tuple(topics), tuple(banned), tuple(canned))


def load_rules(path: Path) -> Rules:
    if not path.is_file():
        raise RulesError(f"rules file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RulesError(f"rules file {path} is not valid YAML: {exc}") from exc
    return parse_rules(raw, str(path))
