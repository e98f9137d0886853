"""One recommendation: candidates from several sources, features, an LLM-scored shortlist, the blend,
business rules and MMR. The API, ranker training and the offline evaluation all run this code.

    history ─┬─ embedding neighbours of the profile, of the latest item and of each recent seed
             ├─ co-visitation with the recent items                       ─┐
             └─ popularity with recency decay (and in the request's category) ├─ rules ─ features
    context item: its neighbours and co-visited items                      ─┘
      ─ blend without LLM ─ top ``llm_candidates`` ─ LLM P("Yes") ─ blend ─ MMR ─ reasons

A user with no history is a cold start: popular items (in the category, when one is asked for) and
the context item's neighbours, spread out by MMR.

The API runs it over the Redis catalogue and signals (``apps/recommend``), ranker training and the
MovieLens evaluation (``finetune/``) over in-memory ones: one pipeline, so what is evaluated is what
is served.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from core.errors import EngineOverloadedError, ModelNotReadyError
from domains.recommend.index import VectorIndex
from domains.recommend.prompt import item_text, split_window
from domains.recommend.ranking import FEATURES, Blender, log_norm, price_gap
from domains.recommend.records import Event
from domains.recommend.rules import LIKED_VERBS, Evidence, Filters, allowed, mmr, reason_for
from domains.recommend.scoring import LLMScorer
from domains.recommend.signals import Signals, is_disliked

log = logging.getLogger(__name__)

RECENCY_DECAY = 0.8  # a seed's weight per step back in the history
SEEDS = 10  # distinct recent items used as seeds
DISLIKED_SEED = 0.3  # a disliked item's weight as a seed, relative to a liked one
SIM_SEEDS = 3  # of those, the most recent with their own neighbour search
POOL_FACTOR = 4  # MMR picks k from the best POOL_FACTOR * k


@dataclass(frozen=True)
class PipelineConfig:
    candidates_per_source: int = 100
    llm_candidates: int = 50
    mmr_lambda: float = 0.75
    exclude_history: bool = True  # never re-recommend what the user just interacted with


@dataclass
class Profile:
    """What the ranking needs from a user's history (newest first)."""

    seeds: list[tuple[str, float]]  # (item, weight by recency and like), newest first
    window: list[tuple[str, float | None]]  # (item id, rating or None) per distinct item, oldest first
    seen: set[str]
    verbs: dict[str, str]
    prices: list[float]
    vector: np.ndarray | None  # recency-weighted mean of the seeds' vectors, unit length
    last: np.ndarray | None  # the latest seed's vector

    @property
    def cold(self) -> bool:
        return not self.seeds


@dataclass
class Ranked:
    item_id: str
    score: float
    reason: str
    source: str
    features: dict[str, float] = field(default_factory=dict)


@dataclass
class Result:
    items: list[Ranked]
    cold_start: bool
    llm_model: str | None  # None: the LLM did not score this request
    ranker: str  # "trained" or "fallback"


def build_profile(history: Sequence[Event], index: VectorIndex) -> Profile:
    """``history``: the user's events, newest first."""
    known = [e for e in history if e.item_id in index]  # newest first; deleted items drop out
    seeds: list[tuple[str, float]] = []
    verbs: dict[str, str] = {}
    best: dict[str, Event] = {}
    for e in known:
        verbs.setdefault(e.item_id, LIKED_VERBS.get(e.type, "liked"))
        if e.item_id not in best:
            best[e.item_id] = e
    for e in known:
        if len(seeds) >= SEEDS:
            break
        if all(s != e.item_id for s, _ in seeds):  # disliked items still say what the user looks at
            seeds.append((e.item_id, RECENCY_DECAY ** len(seeds) * (DISLIKED_SEED if is_disliked(e) else 1.0)))
    # each item's latest event, oldest first as the prompt lists them; the scorer cuts it to the
    # adapter's trained history length
    window = [(e.item_id, e.value if e.type == "rating" else None) for e in best.values()][::-1]
    prices = [p for e in known[:20] if (p := index.items[e.item_id].price) is not None]
    vector = last = None
    if seeds:
        vecs = index.vectors([s for s, _ in seeds])  # [s, dim]
        weights = np.asarray([w for _, w in seeds])[:, None]
        mean = (vecs * weights).sum(axis=0)
        vector = mean / max(float(np.linalg.norm(mean)), 1e-9)
        last = vecs[0]
    return Profile(seeds, window, set(best), verbs, prices, vector, last)


class Pipeline:
    def __init__(
        self,
        index: VectorIndex,
        signals: Signals,
        config: PipelineConfig,
        ranker: Blender,
        pre_ranker: Blender,
        llm: LLMScorer | None = None,
    ) -> None:
        self.index = index
        self.signals = signals
        self.config = config
        self.ranker = ranker  # the final blend (with the LLM feature when it has one)
        self.pre_ranker = pre_ranker  # without the LLM: picks the shortlist, and ranks when no LLM runs
        self.llm = llm

    # ---- candidates ----------------------------------------------------------------------------

    def candidates(
        self, profile: Profile, now: float, context_item: str | None = None, category: str | None = None
    ) -> dict[str, Evidence]:
        n = self.config.candidates_per_source
        found: dict[str, Evidence] = {}

        def note(item: str) -> Evidence:
            return found.setdefault(item, Evidence())

        queries: list[np.ndarray] = []
        seeds_of_query: list[str | None] = []
        if profile.vector is not None:
            queries.append(profile.vector)
            seeds_of_query.append(None)
        for seed, _ in profile.seeds[:SIM_SEEDS]:
            queries.append(self.index.vectors([seed])[0])
            seeds_of_query.append(seed)
        for source, hits in zip(seeds_of_query, self.index.search(np.asarray(queries), n), strict=True):
            for item, sim in hits:
                ev = note(item)
                if source is not None and (ev.seed_sim is None or sim > ev.seed_sim[1]):
                    ev.seed_sim = (source, sim)
        for item, by_seed in self.signals.covisited(profile.seeds, n).items():
            if item in self.index:
                note(item).seed_covis = max(by_seed.items(), key=lambda p: p[1])
        for item, _ in self.signals.popular(n, now):
            if item in self.index:
                note(item).popular = True
        if category:
            for item, _ in self.signals.popular(n, now, category):
                if item in self.index:
                    note(item).popular = True
        if context_item and context_item in self.index:
            vec = self.index.vectors([context_item])
            for item, sim in self.index.search(vec, n)[0]:
                note(item).context = sim
            for item in self.signals.covisited([(context_item, 1.0)], n):
                if item in self.index:
                    note(item).context = max(note(item).context, 0.5)
        if len(found) < n:  # a thin catalogue or a new store: anything in the catalogue is a candidate
            for item in list(self.index.items)[: n - len(found)]:
                note(item)
        return found

    # ---- features and scores -------------------------------------------------------------------

    def features(self, profile: Profile, ids: list[str], now: float, context_item: str | None = None) -> np.ndarray:
        """[len(ids), len(FEATURES)] in FEATURES order; ``llm`` is 0.5 until scored."""
        x = np.zeros((len(ids), len(FEATURES)))
        if not ids:
            return x
        vecs = self.index.vectors(ids)  # [n, dim]
        col = FEATURES.index
        x[:, col("llm")] = 0.5
        if profile.vector is not None and profile.last is not None:
            x[:, col("sim")] = vecs @ profile.vector
            x[:, col("recency")] = vecs @ profile.last
        x[:, col("covis")] = log_norm(self.signals.covis_with(profile.seeds, ids))
        if profile.seeds:
            seed_pop = self.signals.popularity([s for s, _ in profile.seeds], now)
            idf = [(s, w / float(np.sqrt(1.0 + p))) for (s, w), p in zip(profile.seeds, seed_pop, strict=True)]
            x[:, col("covis_idf")] = log_norm(self.signals.covis_with(idf, ids))
        pop = self.signals.popularity(ids, now)
        top = self.signals.popular(1, now)
        top_pop = top[0][1] if top else 0.0
        x[:, col("pop")] = np.log1p(pop) / np.log1p(top_pop) if top_pop > 0 else 0.0
        x[:, col("price_gap")] = price_gap([self.index.items[i].price for i in ids], profile.prices)
        if context_item and context_item in self.index:
            x[:, col("context")] = vecs @ self.index.vectors([context_item])[0]
        return x

    def llm_titles(
        self, llm: LLMScorer, profile: Profile, context_item: str | None
    ) -> tuple[list[str], list[str]] | None:
        """(liked, disliked) for the prompt, as the scorer's adapter was trained to read them (its
        history length, like threshold and item fields), or None when there is nothing to condition on."""
        serving = llm.serving()
        liked, disliked = split_window(profile.window, serving.history, serving.liked_above)
        if context_item and context_item in self.index:
            liked = [*liked, context_item][-serving.history :]
        if not liked and not disliked:
            return None
        return self.item_texts(liked, serving.item_fields), self.item_texts(disliked, serving.item_fields)

    def item_texts(self, ids: Sequence[str], fields: Sequence[str]) -> list[str]:
        """How the prompt names each item: the catalogue fields the adapter was trained with."""
        items = [self.index.items[i] for i in ids]
        return [item_text(it.title, it.category, it.price, fields) for it in items]

    def score(
        self, profile: Profile, ids: list[str], now: float, context_item: str | None = None, use_llm: bool = True
    ) -> tuple[np.ndarray, np.ndarray, str | None]:
        """(scores [n], features [n, F], LLM model or None): the shortlist is re-scored with the LLM;
        the rest keep their pre-score, below every shortlisted item."""
        x = self.features(profile, ids, now, context_item)
        pre = self.pre_ranker.score(x)
        m = min(self.config.llm_candidates, len(ids))
        if not (use_llm and self.llm is not None and self.ranker.uses_llm and m > 0):
            return pre, x, None
        titles = self.llm_titles(self.llm, profile, context_item)
        if titles is None:
            return pre, x, None
        short = np.argsort(-pre, kind="stable")[:m]
        fields = self.llm.serving().item_fields
        try:
            probs = self.llm.score(titles[0], titles[1], self.item_texts([ids[i] for i in short], fields))
        except (EngineOverloadedError, ModelNotReadyError) as exc:  # a busy engine: rank without it, at once
            log.warning("recommend: ranking without the LLM this time (%s)", exc.message)
            return pre, x, None
        x[short, FEATURES.index("llm")] = probs
        scores = pre.copy() - 2.0  # outside the shortlist: after it (scores are in (0, 1))
        scores[short] = self.ranker.score(x[short])
        return scores, x, self.llm.model()

    # ---- the whole request ---------------------------------------------------------------------

    def recommend(
        self,
        history: Sequence[Event],
        *,
        k: int,
        blocked: set[str] | None = None,
        filters: Filters | None = None,
        context_item: str | None = None,
        now: float | None = None,
        use_llm: bool = True,
    ) -> Result:
        now = time.time() if now is None else now
        filters = filters or Filters()
        profile = build_profile(history, self.index)
        evidence = self.candidates(profile, now, context_item, filters.category)
        blocked = set(blocked or ())
        if self.config.exclude_history:
            blocked |= profile.seen
        if context_item:
            blocked.add(context_item)
        ids = [i for i in evidence if allowed(self.index.items[i], filters, blocked)]
        if not ids:
            return Result([], profile.cold, None, self.ranker.kind)
        scores, x, llm_model = self.score(profile, ids, now, context_item, use_llm)
        order = np.argsort(-scores, kind="stable")[: max(POOL_FACTOR * k, k)]
        pool = [ids[i] for i in order]
        picks = mmr(scores[order], self.index.vectors(pool), k, self.config.mmr_lambda)
        titles = {i: self.index.items[i].title for i in profile.seen}
        context_title = self.index.items[context_item].title if context_item and context_item in self.index else None
        out = []
        for p in picks:
            row = order[p]
            item = self.index.items[ids[row]]
            reason, source = reason_for(evidence[item.id], item, titles, profile.verbs, context_title)
            feats = {f: round(float(v), 4) for f, v in zip(FEATURES, x[row], strict=True)}
            out.append(Ranked(item.id, float(scores[row]), reason, source, feats))
        return Result(out, profile.cold, llm_model, self.ranker.kind)
