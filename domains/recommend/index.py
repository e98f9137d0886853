"""Catalogue items with unit vectors in memory: lookup by id, and nearest neighbours by inner product
(cosine, since the vectors are unit length) over a FAISS flat index.

The serving catalogue (``apps/recommend/catalogue.py``) mirrors Redis into one; the offline
evaluation and ranker training fill one from a file. FAISS is the project's vector search (DESIGN:
components); it is the one import here beyond numpy and core.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

import faiss
import numpy as np

from domains.recommend.records import Item

EmbedFn = Callable[[list[str]], np.ndarray]  # texts -> [n, dim] unit-length float32


class VectorIndex:
    """Items with unit vectors in memory: lookup by id, and nearest neighbours by inner product."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.items: dict[str, Item] = {}
        self._vec: dict[str, np.ndarray] = {}
        self._num: dict[str, int] = {}  # item id -> FAISS id (stable for this mirror's life)
        self._by_num: dict[int, str] = {}
        self._next = 0
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.lock = threading.RLock()

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.items

    def get(self, item_id: str) -> Item | None:
        return self.items.get(item_id)

    def put(self, items: list[Item], vectors: np.ndarray) -> None:
        """Add or replace items with their vectors [n, dim]."""
        with self.lock:
            self.remove([i.id for i in items if i.id in self._num])
            if not items:
                return
            nums = np.arange(self._next, self._next + len(items), dtype=np.int64)
            self._next += len(items)
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            self._index.add_with_ids(vectors, nums)
            for item, num, vec in zip(items, nums.tolist(), vectors, strict=True):
                self.items[item.id] = item
                self._vec[item.id] = vec
                self._num[item.id] = num
                self._by_num[num] = item.id

    def update_item(self, item: Item) -> None:
        """Replace an item's fields, keeping its vector (price, stock)."""
        with self.lock:
            self.items[item.id] = item

    def remove(self, ids: Iterable[str]) -> None:
        with self.lock:
            nums = [self._num.pop(i) for i in ids if i in self._num]
            for num in nums:
                item_id = self._by_num.pop(num)
                self.items.pop(item_id, None)
                self._vec.pop(item_id, None)
            if nums:
                self._index.remove_ids(np.asarray(nums, dtype=np.int64))  # type: ignore[arg-type]  # the SWIG wrapper takes arrays

    def vector(self, item_id: str) -> np.ndarray | None:
        return self._vec.get(item_id)

    def vectors(self, ids: list[str]) -> np.ndarray:
        """[len(ids), dim]; all ids must be known."""
        with self.lock:
            if not ids:
                return np.zeros((0, self.dim), dtype=np.float32)
            return np.stack([self._vec[i] for i in ids])

    def search(self, queries: np.ndarray, n: int) -> list[list[tuple[str, float]]]:
        """Per query row [m, dim], its ``n`` nearest items as (id, inner product), best first."""
        with self.lock:
            if not self.items or len(queries) == 0:
                return [[] for _ in range(len(queries))]
            k = min(n, len(self.items))
            scores, nums = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
            return [
                [(self._by_num[int(j)], float(s)) for s, j in zip(row_s, row_j, strict=True) if j >= 0]
                for row_s, row_j in zip(scores, nums, strict=True)
            ]
