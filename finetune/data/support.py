"""The support training set: Bitext rows with retrieved passages, and the held-out splits.

Bitext: each row is a customer request, its intent and an agent response. A fixed, seeded 10% per
intent is held out; every other row is the knowledge base ("KB") that prompts retrieve from. Each
row's prompt carries the response of the most similar *other* KB row (by request similarity), never
its own, so the model learns to answer from a retrieved snippet, as the support app will ask it to.
The readers, the prompt and the intent head's file are ``domains.support``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

import numpy as np

from domains.support import SupportRow

T = TypeVar("T")


def stratified_split(
    items: Sequence[T], key: Callable[[T], Hashable], held_out_share: float, seed: int
) -> tuple[list[T], list[T]]:
    """(kept, held_out) with ``held_out_share`` of every class held out; the same for the same seed."""
    rng = random.Random(seed)
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    kept: list[T] = []
    held: list[T] = []
    for label in sorted(groups, key=str):
        group = groups[label][:]
        rng.shuffle(group)
        cut = round(len(group) * held_out_share)
        held.extend(group[:cut])
        kept.extend(group[cut:])
    return kept, held


def nearest_allowed(
    queries: list[SupportRow], query_vecs: np.ndarray, kb: list[SupportRow], kb_vecs: np.ndarray
) -> list[int]:
    """For each query, the KB index with the highest cosine similarity (unit vectors), skipping the
    query's own row and any row with the same request or response: retrieving the answer itself would
    teach the model to copy, and score a held-out duplicate as a hit."""
    by_request: dict[str, list[int]] = {}
    by_response: dict[str, list[int]] = {}
    for i, row in enumerate(kb):
        by_request.setdefault(row.request, []).append(i)
        by_response.setdefault(row.response, []).append(i)
    out: list[int] = []
    for start in range(0, len(queries), 1024):  # bounded memory: [chunk, kb] similarities at a time
        sims = query_vecs[start : start + 1024] @ kb_vecs.T  # [chunk, kb]
        for row_sims, q in zip(sims, queries[start : start + 1024], strict=True):
            banned = by_request.get(q.request, []) + by_response.get(q.response, [])
            row_sims[banned] = -np.inf
            best = int(row_sims.argmax())
            if row_sims[best] == -np.inf:
                raise ValueError(f"no other knowledge-base row to retrieve for {q.request!r}")
            out.append(best)
    return out
