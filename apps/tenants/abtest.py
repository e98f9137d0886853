"""The A/B report: each version's outcome rate with a 95% interval, and the candidate against the
promoted version with an interval on the difference and a verdict.

Outcomes are counted per version as feedback arrives (``core.versions.AdapterVersions.count``):

    support    served = answers;          success = "up",       failure = "down"    (helpful rate)
               also "handoff" per answer: the deflection rate is 1 - handoff / served
    recommend  served = recommendations;  success = "click"     (click-through rate), "purchase" too
    sentiment  served = items labelled;   success = "correct",  failure = "incorrect" (analysts' verdicts)

Rates use the Wilson score interval; the difference uses Newcombe's hybrid score interval (method
10), which stays honest at small counts and rates near 0 or 1. The verdict is "better" or "worse"
only when the difference's interval excludes zero, else "no difference" (with the n it rests on).
"""

from __future__ import annotations

import math
from typing import Any

Z95 = 1.959963984540054

# domain -> (primary outcome's name, success counter, denominator: "served" or a failure counter)
PRIMARY = {
    "support": ("helpful_rate", "up", "down"),
    "recommend": ("click_through_rate", "click", "served"),
    "sentiment": ("accuracy", "correct", "incorrect"),
}


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def newcombe(s1: int, n1: int, s2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """Difference p1 - p2 and its interval (Newcombe 1998, method 10)."""
    p1 = s1 / n1 if n1 else 0.0
    p2 = s2 / n2 if n2 else 0.0
    l1, u1 = wilson(s1, n1, z)
    l2, u2 = wilson(s2, n2, z)
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, lo, hi


def rate_of(domain: str, counts: dict[str, int]) -> tuple[int, int]:
    """(successes, trials) of the domain's primary outcome."""
    _, success, denominator = PRIMARY[domain]
    s = int(counts.get(success, 0))
    n = int(counts.get("served", 0)) if denominator == "served" else s + int(counts.get(denominator, 0))
    return s, max(n, s)


def label(version: int) -> str:
    return "shared" if version == 0 else f"v{version}"


def ab_report(domain: str, outcomes: dict[int, dict[str, int]], route: dict[str, Any]) -> dict[str, Any]:
    metric = PRIMARY[domain][0]
    rows = []
    for version, counts in outcomes.items():
        s, n = rate_of(domain, counts)
        lo, hi = wilson(s, n)
        row: dict[str, Any] = {
            "version": label(version),
            "counts": counts,
            "successes": s,
            "n": n,
            metric: round(s / n, 4) if n else None,
            "ci95": [round(lo, 4), round(hi, 4)],
        }
        if domain == "support" and counts.get("served"):
            row["deflection_rate"] = round(1 - counts.get("handoff", 0) / counts["served"], 4)
        rows.append(row)
    out: dict[str, Any] = {"domain": domain, "metric": metric, "versions": rows}
    promoted, candidate = route.get("promoted"), route.get("candidate")
    base = promoted if promoted is not None else 0
    if candidate is not None:
        out["comparison"] = compare(domain, outcomes, candidate, base)
    return out


def compare(domain: str, outcomes: dict[int, dict[str, int]], candidate: int, control: int) -> dict[str, Any]:
    s1, n1 = rate_of(domain, outcomes.get(candidate, {}))
    s2, n2 = rate_of(domain, outcomes.get(control, {}))
    d, lo, hi = newcombe(s1, n1, s2, n2)
    if n1 == 0 or n2 == 0:
        verdict = "not enough data"
    elif lo > 0:
        verdict = "better"
    elif hi < 0:
        verdict = "worse"
    else:
        verdict = "no difference"
    return {
        "candidate": label(candidate),
        "control": label(control),
        "difference": round(d, 4),
        "ci95": [round(lo, 4), round(hi, 4)],
        "n": [n1, n2],
        "verdict": verdict,
    }
