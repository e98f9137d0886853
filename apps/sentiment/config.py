"""The monitor's domain config, read from YAML into dataclasses that refuse nonsense at load time.

    bucket: 5m                       # the resolution of the Redis-held counts
    watchlist: {file: watchlist.yaml}  # or {csv: path}: name variants -> ticker
    topics: {method: embedding, threshold: 0.35, max_topics: 2, labels: {earnings: [..], ..}}
    rules: [{name, kind: zscore|ewma, scope: [entity, topic, all], window: 1h, baseline: 7d, ...}]

Paths are taken relative to the YAML file; ``{shared}`` expands to the shared data folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from core.errors import InvalidRequestError

Scope = Literal["entity", "topic", "all"]
SCOPES: tuple[Scope, ...] = ("entity", "topic", "all")
RuleKind = Literal["zscore", "ewma"]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str | int | float) -> int:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"7d"`` or a number of seconds -> seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = int(value)
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", str(value))
        if not match:
            raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 15m, 1h, 7d)")
        seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


@dataclass
class Rule:
    """One anomaly rule, evaluated per key of each scope it names."""

    name: str
    kind: RuleKind
    scopes: tuple[Scope, ...]
    window_s: int
    baseline_s: int
    min_items: int = 5
    severity: dict[str, float] = field(default_factory=lambda: {"warning": 2.0, "critical": 3.0})
    cooldown_s: int = 6 * 3600
    prior_share: float = 0.25  # negative share assumed where a key has no baseline yet
    prior_weight: float = 10.0  # pseudo-items of prior_share added to every baseline
    min_std: float = 0.05  # floor on the standard error: a huge window must not make every small shift huge
    alpha: float = 0.3  # EWMA smoothing (ewma rules)
    min_negative_share: float = 0.5  # a surge must also be mostly negative to count

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.name):
            raise ValueError(f"rule name {self.name!r}: use 1-64 of letters, digits, '_', '.', '-'")
        if self.kind not in ("zscore", "ewma"):
            raise ValueError(f"rule {self.name}: kind must be zscore or ewma, got {self.kind!r}")
        if not self.scopes or any(s not in SCOPES for s in self.scopes):
            raise ValueError(f"rule {self.name}: scope must be a list of {', '.join(SCOPES)}")
        if self.baseline_s <= self.window_s:
            raise ValueError(f"rule {self.name}: the baseline must be longer than the window")
        if self.min_items < 1:
            raise ValueError(f"rule {self.name}: min_items must be at least 1")
        if not self.severity or any(not isinstance(v, int | float) for v in self.severity.values()):
            raise ValueError(f"rule {self.name}: severity maps level names to numeric thresholds")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"rule {self.name}: alpha must be in (0, 1]")
        if not 0 <= self.prior_share <= 1 or not 0 <= self.min_negative_share <= 1:
            raise ValueError(f"rule {self.name}: shares must be in [0, 1]")
        if self.prior_weight < 0:
            raise ValueError(f"rule {self.name}: prior_weight must not be negative")
        if self.min_std <= 0:
            raise ValueError(f"rule {self.name}: min_std must be positive")

    def level(self, score: float) -> str | None:
        """The highest severity whose threshold ``score`` reaches, or None."""
        reached = [(t, name) for name, t in self.severity.items() if score >= t]
        return max(reached)[1] if reached else None


@dataclass
class TopicConfig:
    labels: dict[str, list[str]]
    method: Literal["embedding"] = "embedding"
    threshold: float = 0.35
    max_topics: int = 2

    def __post_init__(self) -> None:
        if not self.labels or any(not v for v in self.labels.values()):
            raise ValueError("topics.labels must map each topic to at least one description")
        if self.method != "embedding":
            raise ValueError("topics.method must be 'embedding'")
        if not 0 <= self.threshold < 1 or self.max_topics < 1:
            raise ValueError("topics.threshold must be in [0, 1) and max_topics at least 1")


@dataclass
class MonitorConfig:
    bucket_s: int
    rules: list[Rule]
    topics: TopicConfig
    watchlist_file: Path | None = None
    watchlist_csv: Path | None = None
    source: Path | None = None

    def __post_init__(self) -> None:
        for rule in self.rules:
            for what, seconds in (("window", rule.window_s), ("baseline", rule.baseline_s)):
                if seconds % self.bucket_s:
                    raise ValueError(f"rule {rule.name}: {what} must be a multiple of the bucket ({self.bucket_s}s)")
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError("rule names must be distinct")

    @property
    def retention_s(self) -> int:
        """How long buckets must be kept for the longest rule."""
        return max((r.baseline_s + r.window_s for r in self.rules), default=7 * 86400)


def _rule(raw: dict[str, Any]) -> Rule:
    raw = dict(raw)
    scope = raw.pop("scope", ["entity", "topic"])
    scopes = tuple([scope] if isinstance(scope, str) else scope)
    known = {"name", "kind", "window", "baseline", "min_items", "severity", "cooldown", "prior_share", "min_std"}
    known |= {"prior_weight"}
    known |= {"alpha", "min_negative_share"}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"rule {raw.get('name')!r}: unknown keys {sorted(unknown)}")
    return Rule(
        name=str(raw["name"]),
        kind=raw.get("kind", "zscore"),
        scopes=scopes,
        window_s=parse_duration(raw.get("window", "1h")),
        baseline_s=parse_duration(raw.get("baseline", "7d")),
        min_items=int(raw.get("min_items", 5)),
        severity={str(k): float(v) for k, v in (raw.get("severity") or {"warning": 2.0, "critical": 3.0}).items()},
        cooldown_s=parse_duration(raw.get("cooldown", "6h")),
        prior_share=float(raw.get("prior_share", 0.25)),
        min_std=float(raw.get("min_std", 0.05)),
        prior_weight=float(raw.get("prior_weight", 10.0)),
        alpha=float(raw.get("alpha", 0.3)),
        min_negative_share=float(raw.get("min_negative_share", 0.5)),
    )


def load_monitor_config(path: Path, shared_data_dir: Path | None = None) -> MonitorConfig:
    """Read and check the YAML; every mistake is an ``InvalidRequestError`` naming the file."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"cannot read sentiment config {path}: {exc}") from exc

    def resolve(value: str | None) -> Path | None:
        if not value:
            return None
        text = str(value).replace("{shared}", str(shared_data_dir or ""))
        p = Path(text).expanduser()
        return p if p.is_absolute() else (path.parent / p)

    try:
        watch = raw.get("watchlist") or {}
        topics = raw.get("topics") or {}
        return MonitorConfig(
            bucket_s=parse_duration(raw.get("bucket", "5m")),
            rules=[_rule(r) for r in raw.get("rules") or []],
            topics=TopicConfig(
                labels={str(k): [str(x) for x in v] for k, v in (topics.get("labels") or {}).items()},
                method=topics.get("method", "embedding"),
                threshold=float(topics.get("threshold", 0.35)),
                max_topics=int(topics.get("max_topics", 2)),
            ),
            watchlist_file=resolve(watch.get("file")),
            watchlist_csv=resolve(watch.get("csv")),
            source=path,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidRequestError(f"sentiment config {path}: {exc}") from exc
