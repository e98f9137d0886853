"""``domainllm eval recommend-games``: next-product ranking on Amazon Video Games (LLMRank's Games-6k).

Data and split (``domains.recommend.games``): each user's sequence from ``Games-6k.valid.inter``
(history, then the valid target; the test file is held out from this project). Every model, signal,
blend and the adapter learn from the fit histories only (each sequence less its last item). A tenth
of the users (by a hash of the id) are dev users: their last items choose every setting (item-kNN's
recency decay, ALS's size, SASRec's epoch, the blend's weights, the LLM's weight). The other users
are report users: their last items are reported and never tuned on.

Protocols, on the same report users for every system:

* **full ranking**: rank every product the user has not bought; NDCG@10 and Recall@10 of the
  held-out product.
* **LLMRank's 20 candidates**: the held-out product and 19 products the user never bought, drawn
  uniformly with a fixed seed (LLMRank's "random" candidates); ties count against the system.
  NDCG@1/5/10/20 and HR@1/5/10.

Systems: popularity, item-kNN (cosine over co-purchases), implicit ALS and BPR, MiniLM (cosine of
each product's title to the user's recency-weighted profile), SASRec (two self-attention blocks,
sampled softmax), the recommender's pipeline without the LLM (candidates, features, the listwise
blend), and the full pipeline (the same, with the adapter's P("Yes") on each user's shortlist).

The LLM costs seconds per user on this CPU, so it runs on a seeded subsample of the report users
(``llm_users``); every system is reported on that subsample too, with paired bootstrap 95%
intervals for the full pipeline against the same pipeline without the LLM and against each baseline.
"""

from __future__ import annotations

import json
import platform
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.config import PROJECT_ROOT, Settings
from core.interface import Engine
from domains.recommend.games import DATA_SUBDIR, GamesSplit, read_games, split_games
from domains.recommend.index import VectorIndex
from domains.recommend.pipeline import Pipeline, PipelineConfig, Profile, build_profile
from domains.recommend.ranking import FEATURES, NO_LLM_FEATURES, Blender, fallback_blender
from domains.recommend.records import Event
from domains.recommend.scoring import LLMScorer
from domains.recommend.signals import MemorySignals
from finetune.evals.games_baselines import ItemKNN, SASRec
from finetune.evals.recommend import (
    EmbeddingOnly,
    Factorisation,
    PipelineSystem,
    Popularity,
    System,
    embed_items,
    rank_in,
    recall_at_k,
    sample_negatives,
    sampled_rank,
)
from finetune.progress import track
from finetune.ranker import fit_listwise_blender, ndcg_at_k, residual_blender

GAMES_ADAPTER = "recommend-games"
SEED = 42
CANDIDATES = 20  # LLMRank: the held-out product and 19 sampled ones
NOW = 1e9  # events carry their position as ts; popularity is a plain count at any later "now"
HALF_LIFE_S = 1e15  # no decay: Games-6k has no timestamps
COVIS_WINDOW = 10
BOOTSTRAP = 10_000
RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
ANCHORS = {
    "LLMRank (Hou et al., ECIR 2024, arXiv 2305.08845)": "zero-shot ChatGPT ranks 20 candidates (the true next "
    "product and randomly retrieved ones) on Games; its Table 2 reports NDCG@1/5/20 next to fully trained SASRec",
    "SASRec (Kang & McAuley 2018)": "the classic sequential bar; trained here on the same fit histories",
}


@dataclass(frozen=True)
class GamesRun:
    """How much of Games-6k one run covers: the sizes bound its CPU time."""

    report_users: int = 5000  # report users for the systems without the LLM
    llm_users: int = 300  # of those, the ones the full pipeline (LLM) ranks too
    blend_users: int = 3000  # dev users the pre-blend is fitted on
    dev_llm_users: int = 200  # dev users whose shortlists choose the LLM weight
    tune_users: int = 1000  # dev users that choose the baselines' settings
    shortlist: int = 20  # products per user the LLM scores in full ranking
    candidates_per_source: int = 100
    sasrec_minutes: float = 45.0  # a cap; SASRec stops earlier when dev NDCG stops improving

    def __post_init__(self) -> None:
        for name in ("report_users", "blend_users", "tune_users", "candidates_per_source"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 0 <= self.llm_users <= self.report_users:
            raise ValueError("llm_users must be between 0 and report_users")
        if self.shortlist < 1 or self.dev_llm_users < 0 or self.sasrec_minutes < 0:
            raise ValueError("shortlist must be positive; dev_llm_users and sasrec_minutes not negative")


# ---- per-user metrics ------------------------------------------------------------------------------


@dataclass
class Scores:
    """Per-user metric values of one system, in the order of the users evaluated."""

    full: dict[str, list[float]] = field(default_factory=lambda: {"ndcg@10": [], "recall@10": []})
    candidates: dict[str, list[float]] = field(
        default_factory=lambda: {m: [] for m in ("ndcg@1", "ndcg@5", "ndcg@10", "ndcg@20", "hr@5", "hr@10")}
    )
    seconds: float = 0.0

    def add(self, full_rank: int | None, candidate_rank: int) -> None:
        self.full["ndcg@10"].append(ndcg_at_k(full_rank, 10))
        self.full["recall@10"].append(recall_at_k(full_rank, 10))
        for k in (1, 5, 10, 20):
            self.candidates[f"ndcg@{k}"].append(ndcg_at_k(candidate_rank, k))
        for k in (5, 10):
            self.candidates[f"hr@{k}"].append(recall_at_k(candidate_rank, k))

    def summary(self, users: Sequence[int] | None = None) -> dict[str, Any]:
        """Means over all users, or over the positions ``users``."""

        def mean(values: list[float]) -> float:
            a = np.asarray(values)
            return float(a[list(users)].mean() if users is not None else a.mean())

        n = len(users) if users is not None else len(self.full["ndcg@10"])
        return {
            "full_ranking": {m: mean(v) for m, v in self.full.items()},
            "candidates_20": {
                **{m: mean(v) for m, v in self.candidates.items()},
                "hr@1": mean(self.candidates["ndcg@1"]),
            },
            "users": n,
        }


def paired_bootstrap(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, n: int = BOOTSTRAP, seed: int = SEED
) -> dict[str, float]:
    """Mean of a - b over users and its 95% percentile interval over ``n`` resamples of the users."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if not len(diff):
        raise ValueError("no users to compare")
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {
        "mean_diff": float(diff.mean()),
        "ci95_low": float(low),
        "ci95_high": float(high),
        "users": len(diff),
        "a_better": int((diff > 0).sum()),
        "b_better": int((diff < 0).sum()),
    }


def evaluate_systems(
    systems: Sequence[System],
    users: Sequence[str],
    split: GamesSplit,
    negatives: dict[str, list[str]],
) -> dict[str, Scores]:
    """Both protocols, every system, the same users and the same sampled candidates."""
    out: dict[str, Scores] = {}
    for system in systems:
        scores = Scores()
        started = time.monotonic()
        for u in track(users, f"report users ({system.name})"):
            target = split.target[u]
            seen = set(split.history[u])
            full_rank = rank_in(target, system.top(u, seen))
            s = system.scores(u, [target, *negatives[u]])
            scores.add(full_rank, sampled_rank(float(s[0]), s[1:]))
        scores.seconds = round(time.monotonic() - started, 1)
        out[system.name] = scores
    return out


# ---- fitting on the dev users ----------------------------------------------------------------------


def dev_ndcg(system: System, users: Sequence[str], split: GamesSplit) -> float:
    return float(np.mean([ndcg_at_k(rank_in(split.target[u], system.top(u, set(split.history[u])))) for u in users]))


def candidate_rows(
    pipeline: Pipeline, users: Sequence[str], split: GamesSplit, profile: Callable[[str], Profile], use_llm: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, shortlisted, user index) over each dev user's candidates."""
    xs, ys, shorts, groups = [], [], [], []
    for n, user in enumerate(track(users, "dev users" + (" (LLM)" if use_llm else ""))):
        seen = set(split.history[user])
        ids = [i for i in pipeline.candidates(profile(user), NOW) if i not in seen]
        if not ids:
            continue
        scores, x, used = pipeline.score(profile(user), ids, NOW, use_llm=use_llm)
        xs.append(x)
        ys.append(np.asarray([int(i == split.target[user]) for i in ids]))
        shorts.append(scores > -0.5 if used else np.zeros(len(ids), dtype=bool))
        groups.append(np.full(len(ids), n))
    if not xs:
        return np.zeros((0, len(FEATURES))), np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0, dtype=int)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(shorts), np.concatenate(groups)


def _sample(rng: random.Random, users: list[str], n: int) -> list[str]:
    return sorted(rng.sample(users, min(n, len(users))), key=lambda u: (len(u), u))


# ---- the run ---------------------------------------------------------------------------------------


def evaluate(
    settings: Settings,
    *,
    engine: Engine,
    run: GamesRun | None = None,
    adapter: str = GAMES_ADAPTER,
    out_dir: Path = RESULTS_DIR,
    data_dir: Path | None = None,
    out_name: str = "quality_games.json",
) -> dict[str, Any]:
    """Every system on the same report users, both protocols; writes ``out_dir/out_name``.
    ``engine``: warmed (embeddings, and the LLM for the full pipeline)."""
    run = run or GamesRun()
    started = time.monotonic()
    timing: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timing[name] = round(time.monotonic() - since, 1)
        return time.monotonic()

    games = read_games(data_dir or settings.shared_data_dir / DATA_SUBDIR)
    split = split_games(games)
    items = games.items()
    item_ids = sorted(items, key=lambda i: (len(i), i))
    t = time.monotonic()
    vectors = embed_items([items[i] for i in item_ids], engine.embed, settings.data_dir / "runtime" / "cache")
    index = VectorIndex(vectors.shape[1])
    index.put([items[i] for i in item_ids], vectors)
    events: dict[str, list[Event]] = split.events()
    signals = MemorySignals.from_histories(events, HALF_LIFE_S, COVIS_WINDOW)
    profiles: dict[str, Profile] = {}

    def profile(u: str) -> Profile:
        if u not in profiles:
            profiles[u] = build_profile(events[u][::-1][:50], index)
        return profiles[u]

    rng = random.Random(SEED)
    dev = _sample(rng, split.dev, len(split.dev))
    tune = dev[: run.tune_users]
    report = _sample(rng, split.report, run.report_users)
    llm_report = _sample(rng, report, run.llm_users)
    negatives = {
        u: sample_negatives(rng, item_ids, set(split.history[u]) | {split.target[u]}, CANDIDATES - 1) for u in report
    }
    t = lap("data_and_embeddings", t)

    # baselines, each setting chosen on the dev users
    chosen: dict[str, Any] = {}
    knn_by_decay = {d: ItemKNN(split.history, item_ids, d) for d in (1.0, 0.7, 0.5)}
    knn_dev = {d: dev_ndcg(m, tune, split) for d, m in knn_by_decay.items()}
    chosen["item_knn_decay"] = {"dev_ndcg@10": knn_dev, "chosen": max(knn_dev, key=lambda d: knn_dev[d])}
    knn = knn_by_decay[chosen["item_knn_decay"]["chosen"]]
    als_by_size = {f: Factorisation("als", events, item_ids, factors=f) for f in (64, 128)}
    als_dev = {f: dev_ndcg(m, tune, split) for f, m in als_by_size.items()}
    chosen["als_factors"] = {"dev_ndcg@10": als_dev, "chosen": max(als_dev, key=lambda f: als_dev[f])}
    als = als_by_size[chosen["als_factors"]["chosen"]]
    als.name = "implicit_als"
    bpr = Factorisation("bpr", events, item_ids, factors=64)
    t = lap("baselines_fit", t)
    systems: list[System] = [Popularity(events, item_ids), knn, als, bpr, EmbeddingOnly(index, item_ids, profile)]
    sasrec = None
    if run.sasrec_minutes > 0:
        sasrec = SASRec(split.history, item_ids, [(u, split.target[u]) for u in tune], minutes=run.sasrec_minutes)
        systems.append(sasrec)
        t = lap("sasrec_fit", t)

    # the pipeline: the listwise pre-blend on dev users, the LLM weight on other dev users' shortlists
    config = PipelineConfig(
        candidates_per_source=run.candidates_per_source, llm_candidates=run.shortlist, exclude_history=True
    )
    fallback = fallback_blender(False)
    scratch = Pipeline(index, signals, config, fallback_blender(True), fallback, None)
    x, y, _, groups = candidate_rows(scratch, dev[: run.blend_users], split, profile, use_llm=False)
    pre = fit_listwise_blender(x, y, groups, NO_LLM_FEATURES, meta={"llm_model": None})
    blend_stats = {"rows": len(y), "users": run.blend_users, "candidate_recall": float(y.sum()) / run.blend_users}
    t = lap("pre_blend_fit", t)
    no_llm = Pipeline(index, signals, config, pre, pre, None)
    systems.append(PipelineSystem("pipeline_no_llm", no_llm, profile, lambda _: NOW, use_llm=False))

    final: Blender | None = None
    llm: LLMScorer | None = None
    if run.llm_users and run.dev_llm_users:
        llm = LLMScorer(engine, adapter)
        with_llm = Pipeline(index, signals, config, fallback_blender(True), pre, llm)
        dev_llm = dev[run.blend_users : run.blend_users + run.dev_llm_users] or dev[: run.dev_llm_users]
        x, y, short, groups = candidate_rows(with_llm, dev_llm, split, profile, use_llm=True)
        final = residual_blender(pre, x[short], y[short], groups[short], meta={"llm_model": llm.model()})
        blend_stats["llm_rows"] = int(short.sum())
        blend_stats["llm_positives"] = int(y[short].sum())
        blend_stats["llm_dev_users"] = len(dev_llm)
        t = lap("llm_weight_fit", t)

    results = evaluate_systems(systems, report, split, negatives)
    t = lap("report_without_llm", t)
    positions = {u: n for n, u in enumerate(report)}
    llm_rows = [positions[u] for u in llm_report]
    by_llm_users: dict[str, Any] = {name: s.summary(llm_rows) for name, s in results.items()} if llm_rows else {}
    contributions: dict[str, Any] = {}
    if final is not None and llm is not None:
        full = Pipeline(index, signals, config, final, pre, llm)
        system = PipelineSystem("full_pipeline", full, profile, lambda _: NOW, use_llm=True)
        [scores] = evaluate_systems([system], llm_report, split, negatives).values()
        t = lap("report_with_llm", t)
        by_llm_users["full_pipeline"] = scores.summary()
        for name, other in results.items():
            contributions[f"full_pipeline - {name}"] = {
                "full_ranking_ndcg@10": paired_bootstrap(
                    scores.full["ndcg@10"], [other.full["ndcg@10"][p] for p in llm_rows]
                ),
                "candidates_20_ndcg@10": paired_bootstrap(
                    scores.candidates["ndcg@10"], [other.candidates["ndcg@10"][p] for p in llm_rows]
                ),
            }
    pipeline_vs = {
        f"pipeline_no_llm - {name}": {
            "full_ranking_ndcg@10": paired_bootstrap(results["pipeline_no_llm"].full["ndcg@10"], s.full["ndcg@10"])
        }
        for name, s in results.items()
        if name != "pipeline_no_llm"
    }
    llm_info: dict[str, Any] | None = None
    if llm is not None:
        serving = llm.serving()
        llm_info = {
            "model": llm.model(),
            "shortlist": run.shortlist,
            "wording": serving.wording.name,
            "instruction": serving.instruction,
            "prompt": serving.prompt_shape(),
            "history": serving.history,
        }
    report_json: dict[str, Any] = {
        "task": "recommend-games",
        "dataset": f"Amazon Video Games, LLMRank Games-6k ({len(items)} products, {len(split.history)} users; "
        "Games-6k.valid.inter: history + valid target; the test split is held out from this project)",
        "split": "leave-one-out by position: every model learns from each sequence less its last item; dev users "
        "(a tenth, by a hash of the id) tune every setting on their last items; report users' last items are reported",
        "protocols": {
            "full_ranking": "rank every product the user has not bought; NDCG@10, Recall@10",
            "candidates_20": f"LLMRank's: the held-out product and {CANDIDATES - 1} products the user never bought, "
            f"drawn uniformly (seed {SEED}); ties count against the system; NDCG@1/5/10/20, HR@1/5/10",
        },
        "users": {
            "dev_total": len(split.dev),
            "report_total": len(split.report),
            "report": len(report),
            "llm_report": len(llm_report),
            "tune": len(tune),
        },
        "run": run.__dict__,
        "seeds": {"users_and_candidates": SEED, "bootstrap": SEED, "sasrec": SEED, "als_bpr": SEED},
        "llm": llm_info,
        "report_users": {name: s.summary() for name, s in results.items()},
        "llm_users": by_llm_users,
        "llm_contribution": contributions.get("full_pipeline - pipeline_no_llm"),
        "full_pipeline_vs": contributions,
        "pipeline_no_llm_vs": pipeline_vs,
        "chosen_on_dev": chosen,
        "sasrec": {"epochs": sasrec.log, "seconds": round(sasrec.seconds, 1)} if sasrec else None,
        "blenders": {"pre": pre.to_json(), "final": final.to_json() if final else None, **blend_stats},
        "seconds_per_system": {name: s.seconds for name, s in results.items()},
        "timing_s": {**timing, "total": round(time.monotonic() - started, 1)},
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cores": _cores(),
            "device": settings.resolved_device(),
        },
        "anchors": ANCHORS,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / out_name).write_text(json.dumps(report_json, indent=2))
    return report_json


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def print_report(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    for key, title in (("report_users", "report users"), ("llm_users", "report users the LLM ranks too")):
        systems = report[key]
        if not systems:
            continue
        n = next(iter(systems.values()))["users"]
        table = Table(title=f"Games-6k, {title} ({n})")
        for col in ("system", "full NDCG@10", "full Recall@10", "20 cand. NDCG@10", "HR@1", "HR@5", "HR@10"):
            table.add_column(col, justify="left" if col == "system" else "right")
        for name, v in systems.items():
            f, c = v["full_ranking"], v["candidates_20"]
            table.add_row(
                name,
                *(f"{x:.4f}" for x in (f["ndcg@10"], f["recall@10"], c["ndcg@10"], c["hr@1"], c["hr@5"], c["hr@10"])),
            )
        console.print(table)
    contribution = report.get("llm_contribution")
    if contribution:
        for protocol, d in contribution.items():
            console.print(
                f"LLM contribution ({protocol}): {d['mean_diff']:+.4f} "
                f"[95% CI {d['ci95_low']:+.4f}, {d['ci95_high']:+.4f}] over {d['users']} users"
            )
