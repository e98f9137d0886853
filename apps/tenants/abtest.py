"""The A/B report: each version's outcome rate with a 95% interval, and the candidate against the
promoted version with an interval on the difference and a verdict.

Outcomes are counted per version as feedback arrives (``core.versions.AdapterVersions.count``):

    support    served = answers;          success = "up",       failure = "down"    (helpful rate)
               also "handoff" per answer: the deflection rate is 1 - handoff / served
    recommend  served = recommendations;  success = "click"     (click-through rate), "purchase" too
    sentiment  served = items labelled;   success = "correct",  failure = "incorrect" (analysts' verdicts)

Rates use the Wilson score interval. The report is read again and again while feedback arrives (the
dashboard, ``domainllm ab report``), and a fixed-sample 95% interval read at every look calls an
equal pair "better" or "worse" far more often than 5% of the time (an A/A run of 2,000 outcomes per
arm read every 50: more than a quarter of the runs, ``tests/unit/test_versions.py``). So the verdict
rests on an always-valid 95% confidence sequence for the difference (the mixture sequential
probability ratio test of Johari, Pekelis & Walsh, "Always valid inference", 2017, the test behind
Optimizely's stats engine, with a normal mixing prior of standard deviation ``TAU``): however often
it is read, an equal pair is called different at most 5% of the time. It is wider than a fixed-n
interval (about 1.6x at 400 per arm): the price of looking whenever one likes.

The verdict is "better" or "worse" only when that interval excludes zero and each arm has at least
``MIN_PER_ARM`` outcomes (the normal approximation needs them), else "no difference" or "not enough
data" (with the n it rests on). Newcombe's fixed-n interval (method 10) is reported next to it, for
a reader who fixed the sample size in advance and looks once.
"""

from __future__ import annotations

import math
from typing import Any

Z95 = 1.959963984540054
ALPHA = 0.05
TAU = 0.1  # the mixing prior's sd of the difference: version changes move a rate by a few to ~20 points
MIN_PER_ARM = 100  # outcomes per arm before any verdict

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


def always_valid(
    s1: int, n1: int, s2: int, n2: int, alpha: float = ALPHA, tau: float = TAU
) -> tuple[float, float, float]:
    """Difference p1 - p2 and its always-valid (1 - alpha) confidence sequence (mSPRT, normal mixture).

    With V the variance of the estimated difference, the mixture likelihood ratio against a true
    difference theta is sqrt(V / (V + tau^2)) * exp(tau^2 (d - theta)^2 / (2 V (V + tau^2))); the
    sequence holds every theta whose ratio stays below 1 / alpha. V uses add-one rates, so an arm at
    0% or 100% still has a variance.
    """
    p1 = s1 / n1 if n1 else 0.0
    p2 = s2 / n2 if n2 else 0.0
    d = p1 - p2
    if n1 <= 0 or n2 <= 0:
        return d, -1.0, 1.0
    q1, q2 = (s1 + 1) / (n1 + 2), (s2 + 1) / (n2 + 2)
    v = q1 * (1 - q1) / n1 + q2 * (1 - q2) / n2
    t2 = tau * tau
    half = math.sqrt(2 * v * (v + t2) / t2 * math.log(math.sqrt((v + t2) / v) / alpha))
    return d, max(-1.0, d - half), min(1.0, d + half)


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
    d, lo, hi = always_valid(s1, n1, s2, n2)
    _, fixed_lo, fixed_hi = newcombe(s1, n1, s2, n2)
    if min(n1, n2) < MIN_PER_ARM:
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
        "ci95": [round(lo, 4), round(hi, 4)],  # always valid: the verdict's
        "fixed_n_ci95": [round(fixed_lo, 4), round(fixed_hi, 4)],  # Newcombe's, for a single look
        "method": f"always-valid mSPRT (tau={TAU}), at least {MIN_PER_ARM} per arm",
        "n": [n1, n2],
        "verdict": verdict,
    }
