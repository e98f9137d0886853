"""``domainllm eval recommend-ranking``: next-item ranking on MovieLens ml-latest-small.

Protocols (both reported, each named in the JSON):

* **full ranking** (the headline; the shared data README's standard): leave-one-out by timestamp:
  each user's last rating is the test item, the one before it the validation item, the rest the
  history (``domains.recommend.movielens`` orders ratings, same-second ties by movie id, and the
  adapters' training leaves the same two ratings out). Every system ranks all items the user has not rated in the history; Recall@10 and NDCG@10
  of the test item.
* **sampled, 100 negatives**: the test item against 100 items the user never rated, drawn uniformly
  with a fixed seed; ties count against the system. HR@10 (= Recall@10 with one target) and NDCG@10.

Systems, side by side on the same users: popularity (training counts), implicit ALS and BPR (64
factors), embedding-only (MiniLM cosine to the user's recency-weighted profile), the candidate
pipeline blended without the LLM, and the full pipeline (the LLM's P("Yes") on a shortlist of
``llm_candidates`` per user, blended). The blenders are fitted on the validation items (the
pre-blend on every user; the LLM blend on the evaluated users' shortlists), never on test items.

CPU cost is bounded by the shortlist (the LLM scores only ``llm_candidates`` items per user and
stage) and by ``users`` (a seeded subsample).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.config import PROJECT_ROOT, Settings
from core.errors import InvalidRequestError
from core.interface import Engine
from domains.recommend.index import VectorIndex
from domains.recommend.movielens import HELD_OUT, read_movielens, without_held_out
from domains.recommend.pipeline import Pipeline, PipelineConfig, Profile, build_profile
from domains.recommend.ranking import FEATURES, NO_LLM_FEATURES, Blender, fallback_blender
from domains.recommend.records import Event, Item
from domains.recommend.scoring import LLMScorer
from domains.recommend.serving import MOVIELENS_ADAPTER
from domains.recommend.signals import MemorySignals
from finetune.progress import track
from finetune.ranker import fit_blender, ndcg_at_k, residual_blender

K = 10
NEGATIVES = 100
SEED = 42
HALF_LIFE_S = 30 * 86400.0
COVIS_WINDOW = 10
RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
ANCHORS = {
    "LlamaRec (paper, ML-100k = ml-latest-small), full ranking": {"ndcg@10": 0.0759, "recall@10": 0.1524},
    "SASRec (as reported by LlamaRec), full ranking": {"ndcg@10": 0.0522, "recall@10": 0.0993},
    "measured here before (issue 6), full ranking": {"popularity": 0.019, "als_64": 0.036, "bpr": 0.037},
}


# ---- metrics -----------------------------------------------------------------------------------


def recall_at_k(rank: int | None, k: int = K) -> float:
    return 1.0 if rank is not None and rank < k else 0.0


def rank_in(target: str, ranked: Sequence[str]) -> int | None:
    try:
        return list(ranked).index(target)
    except ValueError:
        return None


def sampled_rank(target_score: float, negative_scores: np.ndarray) -> int:
    """0-based rank of the target among sampled negatives; a tie counts against the system."""
    return int(np.sum(negative_scores >= target_score))


def sample_negatives(rng: random.Random, items: Sequence[str], exclude: set[str], n: int = NEGATIVES) -> list[str]:
    """``n`` distinct items outside ``exclude``, uniformly."""
    pool_size = len(items) - len(exclude & set(items))
    if pool_size < n:
        raise InvalidRequestError(f"only {pool_size} items to sample {n} negatives from")
    out: set[str] = set()
    while len(out) < n:
        pick = items[rng.randrange(len(items))]
        if pick not in exclude:
            out.add(pick)
    return sorted(out)


def top_k_excluding(scores: np.ndarray, ids: Sequence[str], seen: set[str], k: int = K) -> list[str]:
    """The ``k`` best ids by score, skipping ``seen``."""
    order = np.argsort(-scores, kind="stable")
    out = []
    for i in order:
        if ids[i] not in seen:
            out.append(ids[i])
            if len(out) == k:
                break
    return out


# ---- data and split ----------------------------------------------------------------------------


@dataclass
class Split:
    """Leave-one-out by timestamp. ``history[u]`` excludes the last two events (validation stage);
    ``history[u] + [val]`` is the test-stage history."""

    history: dict[str, list[Event]]
    val: dict[str, Event]
    test: dict[str, Event]

    def stage(self, name: str) -> dict[str, list[Event]]:
        if name == "val":
            return self.history
        return {u: [*h, self.val[u]] for u, h in self.history.items()}

    def target(self, name: str, user: str) -> str:
        return (self.val if name == "val" else self.test)[user].item_id


if HELD_OUT != 2:
    raise RuntimeError("the evaluation holds out a validation and a test rating: HELD_OUT must be 2")


def leave_one_out(histories: dict[str, list[Event]]) -> Split:
    """``histories`` in time order; users with fewer than 3 events are dropped."""
    split = Split({}, {}, {})
    for user, events in histories.items():
        if len(events) < HELD_OUT + 1:
            continue
        split.history[user] = without_held_out(events)
        split.val[user] = events[-2]
        split.test[user] = events[-1]
    return split


def embed_items(items: list[Item], embed: Callable[[list[str]], np.ndarray], cache_dir: Path | None) -> np.ndarray:
    """[n, dim] unit vectors of the items' text, cached on disk by a hash of the texts."""
    texts = [f"{i.title}. {', '.join(i.tags)}" for i in items]
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = cache_dir / f"minilm_{digest}.npy" if cache_dir else None
    if path is not None and path.is_file():
        return np.load(path)
    # in slices: the engine caps one embed call (max_batch_texts * 16)
    vectors = np.concatenate(
        [np.asarray(embed(texts[i : i + 2048]), dtype=np.float32) for i in range(0, len(texts), 2048)]
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return vectors


# ---- systems -----------------------------------------------------------------------------------


class System:
    """Scores for one user: over all items (full ranking) and over given items (sampled)."""

    name = "system"

    def top(self, user: str, seen: set[str]) -> list[str]:
        raise NotImplementedError

    def scores(self, user: str, ids: list[str]) -> np.ndarray:
        raise NotImplementedError


class Popularity(System):
    name = "popularity"

    def __init__(self, stage: dict[str, list[Event]], item_ids: list[str]) -> None:
        counts: dict[str, int] = {}
        for events in stage.values():
            for e in events:
                counts[e.item_id] = counts.get(e.item_id, 0) + 1
        self.ids = item_ids
        self.counts = counts
        self.all = np.asarray([counts.get(i, 0) for i in item_ids], dtype=np.float64)

    def top(self, user: str, seen: set[str]) -> list[str]:
        return top_k_excluding(self.all, self.ids, seen)

    def scores(self, user: str, ids: list[str]) -> np.ndarray:
        return np.asarray([self.counts.get(i, 0) for i in ids], dtype=np.float64)


class Factorisation(System):
    """implicit's ALS or BPR on the binary user-item matrix of the stage's histories."""

    def __init__(self, kind: str, stage: dict[str, list[Event]], item_ids: list[str], factors: int = 64) -> None:
        import implicit
        from scipy.sparse import csr_matrix
        from threadpoolctl import threadpool_limits

        self.name = f"implicit_{kind}_{factors}"
        self.ids = item_ids
        self.col = {i: n for n, i in enumerate(item_ids)}
        self.row = {u: n for n, u in enumerate(sorted(stage))}
        rows, cols = [], []
        for u, events in stage.items():
            for c in {self.col[e.item_id] for e in events}:
                rows.append(self.row[u])
                cols.append(c)
        matrix = csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(self.row), len(item_ids)))
        with threadpool_limits(1, "blas"):  # leave the other core to whatever else runs here
            if kind == "als":
                model: Any = implicit.cpu.als.AlternatingLeastSquares(
                    factors=factors, regularization=0.05, iterations=20, random_state=SEED, num_threads=1
                )
            else:
                model = implicit.cpu.bpr.BayesianPersonalizedRanking(
                    factors=factors,
                    learning_rate=0.01,
                    regularization=0.01,
                    iterations=100,
                    random_state=SEED,
                    num_threads=1,
                )
            model.fit(matrix, show_progress=False)
        self.users = np.asarray(model.user_factors)
        self.items = np.asarray(model.item_factors)

    def _all(self, user: str) -> np.ndarray:
        return self.items @ self.users[self.row[user]]

    def top(self, user: str, seen: set[str]) -> list[str]:
        return top_k_excluding(self._all(user), self.ids, seen)

    def scores(self, user: str, ids: list[str]) -> np.ndarray:
        return self.items[[self.col[i] for i in ids]] @ self.users[self.row[user]]


class EmbeddingOnly(System):
    name = "embedding_only"

    def __init__(self, index: VectorIndex, item_ids: list[str], profiles: Callable[[str], Profile]) -> None:
        self.index = index
        self.ids = item_ids
        self.matrix = index.vectors(item_ids)  # [n_items, dim]
        self.profiles = profiles

    def _all(self, user: str) -> np.ndarray:
        vector = self.profiles(user).vector
        return self.matrix @ vector if vector is not None else np.zeros(len(self.ids))

    def top(self, user: str, seen: set[str]) -> list[str]:
        return top_k_excluding(self._all(user), self.ids, seen)

    def scores(self, user: str, ids: list[str]) -> np.ndarray:
        vector = self.profiles(user).vector
        return self.index.vectors(ids) @ vector if vector is not None else np.zeros(len(ids))


class PipelineSystem(System):
    """The recommender's own pipeline at one user's time (the last history event)."""

    def __init__(
        self,
        name: str,
        pipeline: Pipeline,
        profiles: Callable[[str], Profile],
        now: Callable[[str], float],
        use_llm: bool,
    ):
        self.name = name
        self.pipeline = pipeline
        self.profiles = profiles
        self.now = now
        self.use_llm = use_llm

    def top(self, user: str, seen: set[str]) -> list[str]:
        profile = self.profiles(user)
        ids = [i for i in self.pipeline.candidates(profile, self.now(user)) if i not in seen]
        if not ids:
            return []
        scores, _, _ = self.pipeline.score(profile, ids, self.now(user), use_llm=self.use_llm)
        return top_k_excluding(scores, ids, seen)

    def scores(self, user: str, ids: list[str]) -> np.ndarray:
        scores, _, _ = self.pipeline.score(self.profiles(user), ids, self.now(user), use_llm=self.use_llm)
        return scores


# ---- blender training on the validation stage --------------------------------------------------


def validation_rows(
    pipeline: Pipeline,
    users: list[str],
    split: Split,
    profiles: Callable[[str], Profile],
    now: Callable[[str], float],
    use_llm: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, shortlisted, user index) over each user's candidates at the validation stage."""
    xs, ys, shorts, groups = [], [], [], []
    phase = "validation users" + (" (LLM)" if use_llm else "")
    for n, user in enumerate(track(users, phase)):
        profile = profiles(user)
        seen = {e.item_id for e in split.history[user]}  # the whole history, not only the profile's window
        ids = [i for i in pipeline.candidates(profile, now(user)) if i not in seen]
        if not ids:
            continue
        scores, x, used = pipeline.score(profile, ids, now(user), use_llm=use_llm)
        target = split.target("val", user)
        xs.append(x)
        ys.append(np.asarray([int(i == target) for i in ids]))
        shorts.append(scores > -0.5 if used else np.zeros(len(ids), dtype=bool))
        groups.append(np.full(len(ids), n))
    if not xs:
        return np.zeros((0, len(FEATURES))), np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0, dtype=int)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(shorts), np.concatenate(groups)


# ---- the run -----------------------------------------------------------------------------------


def run_protocols(
    systems: list[System], users: list[str], split: Split, item_ids: list[str], seen: Callable[[str], set[str]]
) -> dict[str, dict[str, dict[str, float]]]:
    """Both protocols for every system on the same users and the same sampled negatives."""
    rng = random.Random(SEED)
    negatives = {u: sample_negatives(rng, item_ids, seen(u) | {split.target("test", u)}) for u in users}
    full: dict[str, dict[str, float]] = {}
    sampled: dict[str, dict[str, float]] = {}
    for system in systems:
        f_ndcg, f_rec, s_ndcg, s_hr = [], [], [], []
        started = time.monotonic()
        for u in track(users, f"test users ({system.name})"):
            target = split.target("test", u)
            rank = rank_in(target, system.top(u, seen(u)))
            f_ndcg.append(ndcg_at_k(rank))
            f_rec.append(recall_at_k(rank))
            ids = [target, *negatives[u]]
            s = system.scores(u, ids)
            r = sampled_rank(float(s[0]), s[1:])
            s_ndcg.append(ndcg_at_k(r))
            s_hr.append(recall_at_k(r))
        seconds = time.monotonic() - started
        full[system.name] = {"ndcg@10": float(np.mean(f_ndcg)), "recall@10": float(np.mean(f_rec)), "users": len(users)}
        sampled[system.name] = {
            "ndcg@10": float(np.mean(s_ndcg)),
            "hr@10": float(np.mean(s_hr)),
            "recall@10": float(np.mean(s_hr)),
            "users": len(users),
            "seconds": round(seconds, 2),
        }
    return {"full_ranking": full, "sampled_100": sampled}


def evaluate(
    settings: Settings,
    out_dir: Path = RESULTS_DIR,
    users: int | None = None,
    llm_candidates: int = 50,
    adapter: str = MOVIELENS_ADAPTER,
    engine: Engine | None = None,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    """Run both protocols for all systems; write ``quality_recommend_ranking[_<adapter>].json``. ``engine``: a
    warmed engine to use (tests); by default one is built from ``settings`` and closed after."""
    started = time.monotonic()
    folder = data_dir or settings.shared_data_dir / "recsys" / "ml-latest-small"
    movielens = read_movielens(folder / "ratings.csv", folder / "movies.csv")
    items = movielens.items()
    split = leave_one_out(movielens.events())
    everyone = sorted(split.history, key=int) if all(u.isdigit() for u in split.history) else sorted(split.history)
    chosen = sorted(random.Random(SEED).sample(everyone, users)) if users and users < len(everyone) else everyone
    item_ids = sorted(items)
    own_engine = engine is None
    if engine is None:
        from core.engine import LocalEngine

        engine = LocalEngine(settings)
        engine.warm_up()
    try:
        vectors = embed_items([items[i] for i in item_ids], engine.embed, settings.data_dir / "runtime" / "cache")
        index = VectorIndex(vectors.shape[1])
        index.put([items[i] for i in item_ids], vectors)
        llm = LLMScorer(engine, adapter)
        config = PipelineConfig(candidates_per_source=100, llm_candidates=llm_candidates, exclude_history=True)
        categories = {i: it.category for i, it in items.items()}
        report_stages: dict[str, Any] = {}
        pipelines: dict[str, tuple[Pipeline, Callable[[str], Profile], Callable[[str], float]]] = {}
        for stage in ("val", "test"):
            hist = split.stage(stage)
            signals = MemorySignals.from_histories(hist, HALF_LIFE_S, COVIS_WINDOW, categories)
            cache: dict[str, Profile] = {}

            def profile(u: str, hist: dict[str, list[Event]] = hist, cache: dict[str, Profile] = cache) -> Profile:
                if u not in cache:
                    cache[u] = build_profile(hist[u][::-1][:50], index)
                return cache[u]

            def now(u: str, hist: dict[str, list[Event]] = hist) -> float:
                return hist[u][-1].ts

            pipelines[stage] = (
                Pipeline(index, signals, config, fallback_blender(True), fallback_blender(False), llm),
                profile,
                now,
            )
        # blenders from the validation items: the pre-blend on every user, the LLM blend on the chosen users
        val_pipe, val_profile, val_now = pipelines["val"]
        x, y, _, _ = validation_rows(val_pipe, everyone, split, val_profile, val_now, use_llm=False)
        pre = fit_blender(x, y, NO_LLM_FEATURES)
        pre_rows, pre_positives = len(y), int(y.sum())
        val_pipe.pre_ranker = pre
        llm_started = time.monotonic()
        x, y, short, groups = validation_rows(val_pipe, chosen, split, val_profile, val_now, use_llm=True)
        final: Blender = (
            residual_blender(pre, x[short], y[short], groups[short])
            if len(set(y[short].tolist())) == 2
            else fallback_blender(True)
        )
        report_stages["validation"] = {
            "pre_rows": pre_rows,
            "pre_positives": pre_positives,
            "llm_rows": int(short.sum()),
            "llm_positives": int(y[short].sum()),
            "llm_seconds": round(time.monotonic() - llm_started, 1),
        }
        test_pipe, test_profile, test_now = pipelines["test"]
        no_llm = Pipeline(index, test_pipe.signals, config, pre, pre, None)
        full = Pipeline(index, test_pipe.signals, config, final, pre, llm)
        stage_hist = split.stage("test")
        seen_sets = {u: {e.item_id for e in stage_hist[u]} for u in chosen}
        systems: list[System] = [
            Popularity(stage_hist, item_ids),
            Factorisation("als", stage_hist, item_ids),
            Factorisation("bpr", stage_hist, item_ids),
            EmbeddingOnly(index, item_ids, test_profile),
            PipelineSystem("candidates_no_llm", no_llm, test_profile, test_now, use_llm=False),
            PipelineSystem("full_pipeline", full, test_profile, test_now, use_llm=True),
        ]
        results = run_protocols(systems, chosen, split, item_ids, seen_sets.__getitem__)
        llm_model = llm.model()
        serving = llm.serving(llm_model)
    finally:
        if own_engine:
            engine.close()
    report: dict[str, Any] = {
        "task": "recommend-ranking",
        "dataset": "ml-latest-small (610 users, 9,742 movies)",
        "protocols": {
            "full_ranking": "leave-one-out by timestamp (last rating = test, the one before = validation); "
            "rank every item not in the user's history; Recall@10, NDCG@10",
            "sampled_100": f"the test item against {NEGATIVES} uniformly sampled unrated items (seed {SEED}); "
            "ties count against the system; HR@10 (= Recall@10), NDCG@10",
        },
        "users": len(chosen),
        "users_total": len(everyone),
        "items": len(item_ids),
        "llm": {
            "model": llm_model,
            "shortlist": llm_candidates,
            "prompt": f"TALLRec, last {serving.history} ratings (>{serving.liked_above:g} liked)",
        },
        "splits": results,
        "blenders": {"pre": pre.to_json(), "final": final.to_json()},
        "stages": report_stages,
        "anchors": ANCHORS,
        "seconds": round(time.monotonic() - started, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "quality_recommend_ranking" + ("" if adapter == MOVIELENS_ADAPTER else f"_{adapter}")
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2))
    return report


def print_report(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    for split_name, systems in report["splits"].items():
        metrics = [m for m in ("ndcg@10", "recall@10", "hr@10") if m in next(iter(systems.values()))]
        table = Table(title=f"recommend ranking, {split_name} ({report['users']} users)")
        table.add_column("system")
        for m in metrics:
            table.add_column(m, justify="right")
        for name, values in systems.items():
            table.add_row(name, *(f"{values[m]:.4f}" for m in metrics))
        console.print(table)
