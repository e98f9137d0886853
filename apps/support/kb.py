"""The support knowledge base: documents, their chunks, a dense index (FAISS over MiniLM vectors) and a
lexical index (BM25), searched alone or fused.

On disk, under ``root``, every change writes a whole new generation and then points the manifest at it:

    manifest.json        {"generation": 7, "chunks": ..., "chunking": {...}, "dim": 384, ...}
    gen-000007/docs.jsonl       one document per line with its content hash
               chunks.jsonl     one chunk per line, in index order
               vectors.npy      [n_chunks, dim] float32 unit rows (kept so a rebuild re-embeds only new text)
               faq.jsonl, faq_vectors.npy   FAQ doc ids and [n_faq, dim] vectors of their *questions*
               dense.faiss      IndexFlatIP, or IndexHNSWFlat (inner product) above ``ann_threshold`` chunks
               bm25/            the bm25s index

The manifest is replaced with ``os.replace``, so a reader sees the old generation or the new one,
never half of one. In memory the same holds: a writer builds a new immutable ``_Snapshot`` and
swaps it in under a lock; searches read whichever snapshot was current when they began, so they
keep answering while an upsert rebuilds. Writers are serialised by a second lock.

The folder is the shared artefact store: every replica loads it read-only, and a writer announces
each new generation by setting the knowledge base's version key in Redis to it
(``core.shared_state``); a replica looks at that key at most every half second and reloads when it
moved (``refresh_if_changed``), so a document uploaded through one replica is searched on all. A
writer that finds the key behind the manifest (an announcement lost to a Redis outage) sets it again.

Hybrid search fuses the dense and BM25 scores of a shared candidate pool (normalised scores by
default, or reciprocal rank fusion); ``FusionConfig`` holds the setting chosen on the evaluation.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from apps.support.chunking import Chunk, ChunkingConfig, TokenCounter, chunk_document, default_counter
from apps.support.documents import Document, InvalidDocumentError
from core.config import PROJECT_ROOT
from core.embeddings import Embedder
from core.errors import ConflictError, InvalidRequestError
from core.shared_state import SharedVersion

log = logging.getLogger(__name__)

DEFAULT_KB_DIR = PROJECT_ROOT / "data" / "runtime" / "support" / "kb"
SearchMode = Literal["hybrid", "dense", "bm25"]
SEARCH_MODES: tuple[str, ...] = ("hybrid", "dense", "bm25")
FORMAT_VERSION = 1
MAX_K = 100
EMBED_BATCH = 64  # small batches let query embeddings interleave with a big rebuild


@dataclass(frozen=True)
class FusionConfig:
    """How hybrid search fuses the dense and BM25 rankings over a shared pool of candidates (each
    retriever's top ``candidates``; every candidate gets both scores).

    ``method="score"`` (default): min-max normalise each retriever's scores over the pool, then
    ``dense_weight * dense + bm25_weight * bm25``. ``method="rrf"``: weighted reciprocal rank fusion,
    ``sum_r weight_r / (rrf_k + rank_r)``.

    Chosen on ``domainllm eval support-retrieval`` (bench/results/support_retrieval.json), one setting
    for both sets: score fusion at 0.9/0.1 is at least as good as the better single retriever on every
    metric of both (Recall@5: BankFAQs 0.744 vs dense 0.729, Bitext 0.982 vs 0.977). RRF at k=60 with
    equal weights loses to dense alone on both (Bitext Recall@1 0.678 vs 0.785): BM25 alone is far
    weaker there and its ranks count as much as MiniLM's. Weights 0.8-0.9 all do about as well.
    """

    method: Literal["score", "rrf"] = "score"
    dense_weight: float = 0.9
    bm25_weight: float = 0.1
    rrf_k: float = 60.0
    candidates: int = 50

    def __post_init__(self) -> None:
        if self.method not in ("score", "rrf"):
            raise ValueError(f"fusion method must be 'score' or 'rrf', not {self.method!r}")
        if self.rrf_k < 0 or self.dense_weight < 0 or self.bm25_weight < 0:
            raise ValueError("rrf_k and the weights must be >= 0")
        if self.dense_weight + self.bm25_weight <= 0:
            raise ValueError("at least one fusion weight must be positive")
        if self.candidates < 1:
            raise ValueError("candidates must be >= 1")


@dataclass(frozen=True)
class UpsertResult:
    doc_id: str
    status: Literal["added", "updated", "unchanged"]
    chunks: int

    def to_dict(self) -> dict[str, Any]:
        return {"doc_id": self.doc_id, "status": self.status, "chunks": self.chunks}


@dataclass(frozen=True)
class SyncResult:
    """What ``sync_source`` changed: doc ids by what happened to them."""

    source: str
    added: list[str]
    updated: list[str]
    unchanged: list[str]
    deleted: list[str]
    kept: list[str]  # the source's documents left alone because their file failed to parse
    generation: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "kept": self.kept,
            "generation": self.generation,
        }


@dataclass(frozen=True)
class DocumentInfo:
    doc_id: str
    title: str
    url: str | None
    kind: str
    chunks: int
    content_hash: str
    updated_at: float
    source: str | None = None
    source_path: str | None = None


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    doc_id: str
    title: str
    url: str | None
    section: str | None
    text: str
    score: float  # the ranking score of the mode asked for (hybrid: the fused score)
    dense_score: float | None  # cosine similarity of query and chunk
    bm25_score: float | None
    rank: int  # 1 = best


@dataclass(frozen=True)
class FaqMatch:
    doc_id: str
    question: str
    answer: str
    title: str
    url: str | None
    score: float  # cosine similarity of the asked question and the FAQ's question


@dataclass(frozen=True)
class _StoredDoc:
    doc: Document
    content_hash: str
    chunks: int
    updated_at: float


@dataclass(frozen=True)
class _Snapshot:
    """Everything one search reads; never mutated after it is built."""

    generation: int
    docs: dict[str, _StoredDoc]
    chunks: list[Chunk]
    vectors: np.ndarray  # [n_chunks, dim]
    dense: Any  # faiss.Index or None when empty
    bm25: Any  # bm25s.BM25 or None when empty
    faq_ids: list[str]
    faq_vectors: np.ndarray  # [n_faq, dim]

    @staticmethod
    def empty(dim: int) -> _Snapshot:
        zeros = np.zeros((0, dim), dtype=np.float32)
        return _Snapshot(0, {}, [], zeros, None, None, [], zeros)


def _text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


# --- BM25 -----------------------------------------------------------------------------------------


def _stemmer() -> Any:
    try:
        import Stemmer  # PyStemmer: "refunds"/"refunded" -> "refund"
    except ImportError:  # pragma: no cover - a listed dependency; BM25 still works unstemmed
        return None
    return Stemmer.Stemmer("english")


_STEMMER = _stemmer()
STEMMER_NAME = "english" if _STEMMER is not None else None


def _bm25s() -> Any:
    import bm25s

    # bm25s sets its own logger to DEBUG on import, which floods the CLI and server logs
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def bm25_tokens(texts: list[str]) -> list[list[str]]:
    bm25s = _bm25s()
    tokens = bm25s.tokenize(texts, stopwords="en", stemmer=_STEMMER, return_ids=False, show_progress=False)
    return [list(t) for t in tokens]


def _build_bm25(chunks: list[Chunk]) -> Any:
    """The BM25 index of ``chunks``; None when not one of them holds a word (only digits or symbols:
    bm25s cannot index an empty vocabulary, and a BM25 with no terms scores every query 0 anyway)."""
    tokens = bm25_tokens([c.index_text for c in chunks])
    if not any(tokens):
        return None
    index = _bm25s().BM25()
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # a chunk of no words has length 0
        index.index(tokens, show_progress=False)
    return index


def bm25_scores(index: Any, query: str, n_chunks: int) -> np.ndarray:
    """[n_chunks] BM25 score of every chunk (0 where no query term occurs, or with no index)."""
    if index is None:
        return np.zeros(n_chunks, dtype=np.float32)
    tokens = [t for t in bm25_tokens([query])[0] if t in index.vocab_dict]
    if not tokens:
        return np.zeros(int(index.scores["num_docs"]), dtype=np.float32)
    return np.asarray(index.get_scores(tokens), dtype=np.float32)


# --- fusion ---------------------------------------------------------------------------------------


def rrf_fuse(rankings: list[tuple[list[int], float]], rrf_k: float) -> dict[int, float]:
    """Weighted reciprocal rank fusion: ``rankings`` are (ids best first, weight); id -> fused score."""
    fused: dict[int, float] = {}
    for ids, weight in rankings:
        for rank, i in enumerate(ids, start=1):
            fused[i] = fused.get(i, 0.0) + weight / (rrf_k + rank)
    return fused


def minmax(values: np.ndarray) -> np.ndarray:
    """Scaled to [0, 1]; all equal -> all 0 (the retriever cannot tell them apart)."""
    span = float(values.max() - values.min()) if values.size else 0.0
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def score_fuse(
    ids: list[int], dense: np.ndarray, lexical: np.ndarray, dense_weight: float, bm25_weight: float
) -> dict[int, float]:
    """Convex combination of min-max normalised scores of the candidates ``ids`` (``dense``, ``lexical``: [len(ids)])."""
    fused = dense_weight * minmax(dense) + bm25_weight * minmax(lexical)
    return {i: float(f) for i, f in zip(ids, fused, strict=True)}


class KnowledgeBase:
    """``__init__`` is cheap; ``warm_up`` loads what ``root`` holds and is safe to call twice."""

    def __init__(
        self,
        root: Path,
        embedder: Embedder,
        *,
        chunk_tokens: int = 254,
        overlap_tokens: int = 40,
        token_counter: TokenCounter | None = None,
        ann_threshold: int = 20_000,
        fusion: FusionConfig | None = None,
        query_cache_size: int = 1024,
        version: SharedVersion | None = None,
    ) -> None:
        """``version``: the key that announces a new generation to the other replicas (None: a folder
        only this process uses, an evaluation's or a test's)."""
        self.root = Path(root)
        self.embedder = embedder
        self.chunking = ChunkingConfig(chunk_tokens, overlap_tokens)
        self._counter = token_counter
        if ann_threshold < 1:
            raise ValueError("ann_threshold must be >= 1")
        self.ann_threshold = ann_threshold
        self.fusion = fusion or FusionConfig()
        self._dim: int | None = getattr(embedder, "dim", None)
        self._embedder_id: str | None = getattr(embedder, "embedder_id", None)
        self._snap: _Snapshot | None = None
        self._swap_lock = threading.Lock()  # guards the snapshot reference
        self._write_lock = threading.RLock()  # one writer at a time
        self._query_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._query_cache_size = query_cache_size
        self._cache_lock = threading.Lock()
        self._version = version
        self._watch = version.watch() if version is not None else None

    # --- lifecycle -------------------------------------------------------------------------------

    def warm_up(self) -> None:
        with self._write_lock:
            if self._snap is not None:
                return
            version = self._watch.look() if self._watch is not None else None  # read before loading
            snap = self._load()
            self._swap(snap)
            if self._watch is not None and version is not None:
                self._watch.accept(version)

    def refresh(self) -> bool:
        """Reload if another process wrote a newer generation; True when it did."""
        manifest = self._read_manifest()
        current = self._snapshot()
        if manifest is None or int(manifest["generation"]) == current.generation:
            return False
        with self._write_lock:
            self._swap(self._load())
        return True

    def refresh_if_changed(self) -> bool:
        """Reload when a writer (another replica, the CLI) announced a new generation; the version key
        is read at most every ``core.shared_state.CHECK_S``. True when a new generation was loaded."""
        if self._watch is None:
            return False
        version = self._watch.check()
        if version is None:
            return False
        reloaded = self.refresh()
        self._watch.accept(version)
        return reloaded

    def _snapshot(self) -> _Snapshot:
        with self._swap_lock:
            snap = self._snap
        if snap is None:
            self.warm_up()
            with self._swap_lock:
                snap = self._snap
        assert snap is not None
        return snap

    @contextmanager
    def _writing(self) -> Iterator[_Snapshot]:
        """One writer at a time, across threads (a lock) and processes (an flock on ``root/write.lock``),
        starting from the newest generation on disk, so a CLI ingest and a server upsert never drop
        each other's documents."""
        with self._write_lock:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self.root / "write.lock", "w") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                try:
                    manifest = self._read_manifest()
                    if manifest is not None and self._version is not None:
                        on_disk = int(manifest["generation"])
                        if self._version.get() != on_disk:  # an earlier write's announcement was lost
                            self._announce(on_disk)
                    snap = self._snapshot()
                    if manifest is not None and int(manifest["generation"]) != snap.generation:
                        snap = self._load()
                        self._swap(snap)
                    yield snap
                finally:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _swap(self, snap: _Snapshot) -> None:
        with self._swap_lock:
            self._snap = snap

    def _announce(self, generation: int) -> None:
        """Tell every replica that ``generation`` is on disk. When Redis does not answer, the write
        stands (this process serves it), the error goes to the caller, and the next write announces it."""
        if self._version is not None:
            self._version.set(generation)

    # --- reading ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._snapshot().chunks)

    def get(self, doc_id: str) -> Document | None:
        stored = self._snapshot().docs.get(doc_id)
        return stored.doc if stored else None

    def documents(self) -> list[DocumentInfo]:
        return [
            DocumentInfo(
                s.doc.doc_id,
                s.doc.title,
                s.doc.url,
                s.doc.kind,
                s.chunks,
                s.content_hash,
                s.updated_at,
                s.doc.source,
                s.doc.source_path,
            )
            for s in self._snapshot().docs.values()
        ]

    @property
    def generation(self) -> int:
        return self._snapshot().generation

    def search(self, query: str, k: int = 5, mode: str = "hybrid", *, fusion: FusionConfig | None = None) -> list[Hit]:
        """The ``k`` best chunks for ``query``, best first; ``fusion``: another hybrid setting than the
        knowledge base's own, to compare with it."""
        fusion = fusion or self.fusion
        if mode not in SEARCH_MODES:
            raise InvalidRequestError(f"mode must be one of {', '.join(SEARCH_MODES)}, not {mode!r}", mode=mode)
        if not 1 <= k <= MAX_K:
            raise InvalidRequestError(f"k must be between 1 and {MAX_K}, got {k}", k=k)
        if not query or not query.strip():
            raise InvalidRequestError("the query is empty")
        snap = self._snapshot()
        n = len(snap.chunks)
        if n == 0:
            return []
        pool = min(n, max(fusion.candidates, k))
        dense_ids: list[int] = []
        dense_all: dict[int, float] = {}
        qvec = None
        if mode in ("dense", "hybrid"):
            qvec = self._embed_query(query)
            scores, ids = snap.dense.search(qvec[None, :], pool)  # [1, pool]
            dense_ids = [int(i) for i in ids[0] if i >= 0]
            dense_all = {int(i): float(s) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0}
        bm25_ids: list[int] = []
        lexical = None
        if mode in ("bm25", "hybrid"):
            lexical = bm25_scores(snap.bm25, query, n)  # [n_chunks]
            top = np.argsort(-lexical, kind="stable")[:pool]
            bm25_ids = [int(i) for i in top if lexical[i] > 0]
        if mode == "dense":
            ranked = [(i, dense_all[i]) for i in dense_ids]
        elif mode == "bm25":
            assert lexical is not None
            ranked = [(i, float(lexical[i])) for i in bm25_ids]
        else:
            assert qvec is not None and lexical is not None
            if fusion.method == "rrf":
                fused = rrf_fuse([(dense_ids, fusion.dense_weight), (bm25_ids, fusion.bm25_weight)], fusion.rrf_k)
            else:
                pool_ids = list(dict.fromkeys(dense_ids + bm25_ids))
                dense_pool = snap.vectors[pool_ids] @ qvec  # [pool] exact cosine, also for BM25-only candidates
                fused = score_fuse(pool_ids, dense_pool, lexical[pool_ids], fusion.dense_weight, fusion.bm25_weight)
            ranked = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
        hits = []
        for rank, (i, score) in enumerate(ranked[:k], start=1):
            chunk = snap.chunks[i]
            dense_score = None
            if qvec is not None:  # exact cosine also for chunks only BM25 brought in
                dense_score = dense_all.get(i, float(snap.vectors[i] @ qvec))
            hits.append(
                Hit(
                    chunk_id=chunk.chunk_id,
                    doc_id=chunk.doc_id,
                    title=chunk.title,
                    url=chunk.url,
                    section=chunk.section,
                    text=chunk.text,
                    score=float(score),
                    dense_score=dense_score,
                    bm25_score=float(lexical[i]) if lexical is not None else None,
                    rank=rank,
                )
            )
        return hits

    def faq_match(self, question: str) -> FaqMatch | None:
        """The FAQ whose question is most similar to ``question`` (cosine), or None without FAQs.
        The caller decides whether the similarity is high enough to answer with it."""
        snap = self._snapshot()
        if not snap.faq_ids or not question.strip():
            return None
        sims = snap.faq_vectors @ self._embed_query(question)  # [n_faq]
        best = int(np.argmax(sims))
        doc = snap.docs[snap.faq_ids[best]].doc
        return FaqMatch(doc.doc_id, doc.question or "", doc.answer or "", doc.title, doc.url, float(sims[best]))

    def _embed_query(self, query: str) -> np.ndarray:
        """[dim] unit vector; recent queries are cached (the answer path asks faq_match, then search)."""
        with self._cache_lock:
            cached = self._query_cache.get(query)
            if cached is not None:
                self._query_cache.move_to_end(query)
                return cached
        vec = self._embed([query])[0]
        with self._cache_lock:
            self._query_cache[query] = vec
            while len(self._query_cache) > self._query_cache_size:
                self._query_cache.popitem(last=False)
        return vec

    def _embed(self, texts: list[str]) -> np.ndarray:
        """[len(texts), dim] float32 unit rows, embedded in small batches."""
        parts = []
        for start in range(0, len(texts), EMBED_BATCH):
            batch = texts[start : start + EMBED_BATCH]
            vecs = np.asarray(self.embedder.embed(batch, normalize=True), dtype=np.float32)
            if vecs.ndim != 2 or vecs.shape[0] != len(batch):
                raise ValueError(f"the embedder returned shape {vecs.shape} for {len(batch)} texts")
            parts.append(vecs)
        if not parts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        out = np.ascontiguousarray(np.concatenate(parts))
        if self._dim is None:
            self._dim = int(out.shape[1])
        elif out.shape[1] != self._dim:
            raise ValueError(f"the embedder returned {out.shape[1]}-d vectors, the index holds {self._dim}-d")
        return out

    # --- writing ---------------------------------------------------------------------------------

    def upsert(self, doc: Document) -> UpsertResult:
        return self.upsert_many([doc])[0]

    def upsert_many(self, docs: Iterable[Document]) -> list[UpsertResult]:
        """Add or replace documents with one index rebuild; a document whose content did not change
        is left alone ("unchanged"). In a batch naming a doc_id twice, the later one wins."""
        batch: dict[str, Document] = {}
        for doc in docs:
            if not isinstance(doc, Document):
                raise InvalidDocumentError(f"expected a Document, got {type(doc).__name__}")
            batch[doc.doc_id] = doc
        with self._writing() as snap:
            new_docs = dict(snap.docs)
            statuses: dict[str, str] = {}
            now = time.time()
            for doc_id, doc in batch.items():
                statuses[doc_id] = _stage(snap.docs.get(doc_id), doc, new_docs, now)
            if any(s != "unchanged" for s in statuses.values()):
                snap = self._rebuild(snap, new_docs)
        return [UpsertResult(d, statuses[d], snap.docs[d].chunks) for d in batch]  # type: ignore[arg-type]

    def sync_source(
        self, source: str, docs: Iterable[Document], *, keep_paths: Iterable[str] = (), adopt: Iterable[str] = ()
    ) -> SyncResult:
        """Make ``source``'s documents exactly ``docs``, in one new generation: add the new, replace
        the changed, delete the source's documents that are not in ``docs`` (a renamed file is one
        delete and one add), except those whose ``source_path`` is in ``keep_paths`` (files that
        exist but failed to parse this time). Documents of other sources are never touched; a doc_id
        that another source holds is a ``ConflictError`` and nothing changes, unless that source is
        in ``adopt`` (a sitemap takes over pages ingested one by one) or None (ingested before
        sources were recorded): then the document becomes this source's. All or nothing: if
        anything fails (embedding, disk), the previous generation keeps serving."""
        batch: dict[str, Document] = {}
        for doc in docs:
            if doc.source != source:
                raise InvalidDocumentError(f"document {doc.doc_id!r} is from {doc.source!r}, not {source!r}")
            if doc.doc_id in batch:
                raise ConflictError(f"two documents of {source} have the doc_id {doc.doc_id!r}", doc_id=doc.doc_id)
            batch[doc.doc_id] = doc
        keep = set(keep_paths)
        adoptable = {None, source, *adopt}
        with self._writing() as snap:
            taken = {d: s.doc.source for d, s in snap.docs.items() if d in batch and s.doc.source not in adoptable}
            if taken:
                shown = ", ".join(f"{d!r} (held by {src})" for d, src in sorted(taken.items())[:5])
                raise ConflictError(f"doc_ids already held by another source: {shown}; rename or delete them")
            new_docs = dict(snap.docs)
            now = time.time()
            statuses = {d: _stage(snap.docs.get(d), doc, new_docs, now) for d, doc in batch.items()}
            deleted, kept = [], []
            for d, s in snap.docs.items():
                if s.doc.source != source or d in batch:
                    continue
                if s.doc.source_path in keep:
                    kept.append(d)
                else:
                    deleted.append(d)
                    del new_docs[d]
            if deleted or any(s != "unchanged" for s in statuses.values()):
                snap = self._rebuild(snap, new_docs)
        by = {k: sorted(d for d, s in statuses.items() if s == k) for k in ("added", "updated", "unchanged")}
        return SyncResult(
            source, by["added"], by["updated"], by["unchanged"], sorted(deleted), sorted(kept), snap.generation
        )

    def delete(self, doc_id: str) -> bool:
        with self._writing() as snap:
            if doc_id not in snap.docs:
                return False
            self._rebuild(snap, {d: s for d, s in snap.docs.items() if d != doc_id})
        return True

    def _rebuild(self, old: _Snapshot, docs: dict[str, _StoredDoc], *, announce: bool = True) -> _Snapshot:
        """Chunk, embed what is new, index, persist as the next generation, swap, announce. Caller holds
        the write lock."""
        chunks: list[Chunk] = []
        stored: dict[str, _StoredDoc] = {}
        counter = self._counter or default_counter()
        for doc_id, s in docs.items():
            doc_chunks = chunk_document(s.doc, self.chunking, counter)
            chunks.extend(doc_chunks)
            stored[doc_id] = _StoredDoc(s.doc, s.content_hash, len(doc_chunks), s.updated_at)
        known = {_text_key(c.index_text): old.vectors[i] for i, c in enumerate(old.chunks)}
        vectors = self._vectors_for([c.index_text for c in chunks], known)
        faq_ids = [d for d, s in stored.items() if s.doc.kind == "faq"]
        known_q = {_text_key(old.docs[d].doc.question or ""): old.faq_vectors[i] for i, d in enumerate(old.faq_ids)}
        faq_vectors = self._vectors_for([stored[d].doc.question or "" for d in faq_ids], known_q)
        snap = _Snapshot(
            generation=old.generation + 1,
            docs=stored,
            chunks=chunks,
            vectors=vectors,
            dense=self._build_dense(vectors) if chunks else None,
            bm25=_build_bm25(chunks) if chunks else None,
            faq_ids=faq_ids,
            faq_vectors=faq_vectors,
        )
        self._persist(snap)
        self._swap(snap)
        if announce:
            self._announce(snap.generation)
        return snap

    def _vectors_for(self, texts: list[str], known: dict[str, np.ndarray]) -> np.ndarray:
        """[len(texts), dim]: cached vectors where the text was embedded before, the rest embedded now."""
        keys = [_text_key(t) for t in texts]
        missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in known}.items())
        if missing:
            fresh = self._embed([t for _, t in missing])
            known = {**known, **{k: v for (k, _), v in zip(missing, fresh, strict=True)}}
        dim = self._dim or 0
        if not texts:
            return np.zeros((0, dim), dtype=np.float32)
        return np.ascontiguousarray(np.stack([known[k] for k in keys]), dtype=np.float32)

    def _build_dense(self, vectors: np.ndarray) -> Any:
        dim = vectors.shape[1]
        if len(vectors) > self.ann_threshold:
            hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = 80
            hnsw.add(vectors)
            hnsw.hnsw.efSearch = 128
            return hnsw
        flat = faiss.IndexFlatIP(dim)
        flat.add(vectors)
        return flat

    # --- persistence -----------------------------------------------------------------------------

    def _chunking_manifest(self) -> dict[str, Any]:
        counter = self._counter or default_counter()
        manifest: dict[str, Any] = {
            "chunk_tokens": self.chunking.chunk_tokens,
            "overlap_tokens": self.chunking.overlap_tokens,
            "tokenizer": counter.name,
        }
        if self._embedder_id is not None:  # another embedder (DOMAINLLM_EMBEDDER_PATH): re-embed everything
            manifest["embedder"] = self._embedder_id
        return manifest

    def _gen_dir(self, generation: int) -> Path:
        return self.root / f"gen-{generation:06d}"

    def _read_manifest(self) -> dict[str, Any] | None:
        path = self.root / "manifest.json"
        if not path.exists():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def _persist(self, snap: _Snapshot) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self._gen_dir(snap.generation)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        with open(tmp / "docs.jsonl", "w", encoding="utf-8") as f:
            for s in snap.docs.values():
                record = {"doc": s.doc.to_dict(), "content_hash": s.content_hash, "updated_at": s.updated_at}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        with open(tmp / "chunks.jsonl", "w", encoding="utf-8") as f:
            for c in snap.chunks:
                f.write(json.dumps(c.to_dict(), ensure_ascii=False) + "\n")
        np.save(tmp / "vectors.npy", snap.vectors)
        with open(tmp / "faq.jsonl", "w", encoding="utf-8") as f:
            for d in snap.faq_ids:
                f.write(json.dumps(d) + "\n")
        np.save(tmp / "faq_vectors.npy", snap.faq_vectors)
        if snap.dense is not None:
            faiss.write_index(snap.dense, str(tmp / "dense.faiss"))
            if snap.bm25 is not None:
                snap.bm25.save(str(tmp / "bm25"), show_progress=False)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        manifest = {
            "format": FORMAT_VERSION,
            "generation": snap.generation,
            "docs": len(snap.docs),
            "chunks": len(snap.chunks),
            "faqs": len(snap.faq_ids),
            "dim": int(snap.vectors.shape[1]) if snap.vectors.size else self._dim,
            "dense_index": type(snap.dense).__name__ if snap.dense is not None else None,
            "chunking": self._chunking_manifest(),
            "bm25_stemmer": STEMMER_NAME,
            "written_at": time.time(),
        }
        manifest_tmp = self.root / "manifest.json.tmp"
        manifest_tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        os.replace(manifest_tmp, self.root / "manifest.json")
        self._prune(keep={snap.generation, snap.generation - 1})

    def _prune(self, keep: set[int]) -> None:
        """Drop old generations; the one before the current stays for a process still loading it."""
        for path in self.root.glob("gen-*"):
            try:
                generation = int(path.name.removeprefix("gen-").removesuffix(".tmp"))
            except ValueError:
                continue
            if generation not in keep or path.name.endswith(".tmp"):
                shutil.rmtree(path, ignore_errors=True)

    def _load(self) -> _Snapshot:
        manifest = self._read_manifest()
        if manifest is None:
            return _Snapshot.empty(self._dim or 0)
        if manifest.get("format") != FORMAT_VERSION:
            raise InvalidRequestError(f"{self.root}: unknown knowledge-base format {manifest.get('format')!r}")
        generation = int(manifest["generation"])
        gen = self._gen_dir(generation)
        docs: dict[str, _StoredDoc] = {}
        with open(gen / "docs.jsonl", encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                doc = Document.from_dict(record["doc"])
                docs[doc.doc_id] = _StoredDoc(doc, record["content_hash"], 0, record["updated_at"])
        with open(gen / "chunks.jsonl", encoding="utf-8") as f:
            chunks = [Chunk.from_dict(json.loads(line)) for line in f]
        counts: dict[str, int] = {}
        for c in chunks:
            counts[c.doc_id] = counts.get(c.doc_id, 0) + 1
        docs = {d: _StoredDoc(s.doc, s.content_hash, counts.get(d, 0), s.updated_at) for d, s in docs.items()}
        vectors = np.load(gen / "vectors.npy")
        with open(gen / "faq.jsonl", encoding="utf-8") as f:
            faq_ids = [json.loads(line) for line in f]
        faq_vectors = np.load(gen / "faq_vectors.npy")
        dim = manifest.get("dim")
        if self._dim is None and dim:
            self._dim = int(dim)
        stale = manifest.get("chunking") != self._chunking_manifest() or (
            dim is not None and self._dim is not None and int(dim) != self._dim
        )
        if stale:  # chunking settings or embedder changed: rebuild from the stored documents
            log.info("knowledge base %s: settings changed since it was written, rebuilding", self.root)
            written_by = (manifest.get("chunking") or {}).get("embedder")
            same_embedder = written_by is None or self._embedder_id is None or written_by == self._embedder_id
            same_dim = dim is not None and int(dim) == self._dim and same_embedder
            empty = np.zeros((0, self._dim or 0), dtype=np.float32)
            # same embedder: its vectors of unchanged chunk texts are reused
            base = _Snapshot(
                generation, {}, chunks if same_dim else [], vectors if same_dim else empty, None, None, [], empty
            )
            # not under the folder's lock: the next write (under it) announces this generation
            return self._rebuild(base, docs, announce=False)
        dense = faiss.read_index(str(gen / "dense.faiss")) if chunks else None
        if isinstance(dense, faiss.IndexHNSWFlat):
            dense.hnsw.efSearch = 128
        bm25 = None
        if chunks:
            if manifest.get("bm25_stemmer") == STEMMER_NAME and (gen / "bm25").exists():
                bm25 = _bm25s().BM25.load(str(gen / "bm25"), show_progress=False)
            else:
                bm25 = _build_bm25(chunks)
        return _Snapshot(generation, docs, chunks, vectors, dense, bm25, faq_ids, faq_vectors)


def _stage(old: _StoredDoc | None, doc: Document, new_docs: dict[str, _StoredDoc], now: float) -> str:
    """Put ``doc`` into ``new_docs`` unless it is the same as ``old``; its status."""
    digest = doc.content_hash()
    if old is not None and old.content_hash == digest:
        if (old.doc.source, old.doc.source_path) == (doc.source, doc.source_path):
            return "unchanged"
        new_docs[doc.doc_id] = _StoredDoc(doc, digest, old.chunks, old.updated_at)  # moved: same chunks
        return "updated"
    new_docs[doc.doc_id] = _StoredDoc(doc, digest, 0, now)
    return "added" if old is None else "updated"


@contextmanager
def scratch_kb(
    documents: Iterable[Document], embedder: Embedder, *, fusion: FusionConfig | None = None
) -> Iterator[KnowledgeBase]:
    """A knowledge base in a temporary folder holding ``documents``, deleted on exit: for evaluations
    and benchmarks, which must not touch the served one."""
    with tempfile.TemporaryDirectory(prefix="kb-") as root:
        kb = KnowledgeBase(Path(root), embedder, fusion=fusion)
        kb.warm_up()
        kb.upsert_many(documents)
        yield kb
