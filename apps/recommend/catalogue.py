"""The catalogue: items and their MiniLM vectors, persisted in Redis and mirrored in memory in a
``domains.recommend.index.VectorIndex`` (FAISS, inner product over unit vectors).

    {ns}:items     hash  item id -> Item JSON
    {ns}:vec       hash  item id -> float32 vector bytes
    {ns}:version   int   bumped on every change

Every process (API replicas, the CLI) keeps a mirror and compares versions before it reads: a
version it did not write means another process changed the catalogue, and the mirror reloads. An
upsert embeds only items whose text changed; a price or stock change keeps the old vector. An item is
a candidate as soon as its upsert returns: the index is updated in the same step.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import redis

from domains.recommend.index import EmbedFn, VectorIndex
from domains.recommend.records import Item


class Catalogue:
    """The Redis-persisted catalogue with its in-memory mirror; ``embed`` makes unit vectors."""

    def __init__(self, client: redis.Redis, namespace: str, embed: EmbedFn, dim: int = 384) -> None:
        self.client: Any = client  # redis-py's sync/async union types are noise here
        self.ns = namespace
        self.embed = embed
        self.dim = dim
        self.index = VectorIndex(dim)
        self._version = -1
        self._lock = threading.Lock()

    def _key(self, name: str) -> str:
        return f"{self.ns}:{name}"

    def sync(self) -> VectorIndex:
        """The mirror, reloaded first if another process changed the catalogue."""
        version = int(self.client.get(self._key("version")) or 0)
        if version != self._version:
            with self._lock:
                if version != self._version:
                    self._reload(version)
        return self.index

    def _reload(self, version: int) -> None:
        raw_items = self.client.hgetall(self._key("items"))
        raw_vecs = self.client.hgetall(self._key("vec"))
        items, vecs = [], []
        for key, data in raw_items.items():
            vec = raw_vecs.get(key)
            if vec is None or len(vec) != self.dim * 4:
                continue  # written half-way by a crashed writer: the next upsert of it repairs it
            items.append(Item.from_json(data))
            vecs.append(np.frombuffer(vec, dtype=np.float32))
        index = VectorIndex(self.dim)
        index.put(items, np.stack(vecs) if vecs else np.zeros((0, self.dim), dtype=np.float32))
        self.index = index
        self._version = version

    def upsert(self, items: list[Item]) -> tuple[int, int]:
        """Store and index ``items``; (added, updated). Only items whose text changed are embedded."""
        index = self.sync()
        with self._lock:
            to_embed = [i for i in items if i.id not in index or index.items[i.id].text() != i.text()]
            same_text = [i for i in items if i.id in index and index.items[i.id].text() == i.text()]
            added = sum(1 for i in items if i.id not in index)
            vectors = self.embed([i.text() for i in to_embed]) if to_embed else np.zeros((0, self.dim), np.float32)
            vectors = np.asarray(vectors, dtype=np.float32)
            if vectors.shape != (len(to_embed), self.dim):
                raise ValueError(f"the embedder returned {vectors.shape}, expected ({len(to_embed)}, {self.dim})")
            pipe = self.client.pipeline(transaction=True)
            for item in items:
                pipe.hset(self._key("items"), item.id, item.to_json())
            for item, vec in zip(to_embed, vectors, strict=True):
                pipe.hset(self._key("vec"), item.id, vec.tobytes())
            pipe.incr(self._key("version"))
            version = int(pipe.execute()[-1])
            if version == self._version + 1:  # nobody else wrote in between: update the mirror in place
                index.put(to_embed, vectors)
                for item in same_text:
                    index.update_item(item)
                self._version = version
        return added, len(items) - added

    def delete(self, ids: list[str]) -> tuple[list[str], list[str]]:
        """(deleted, unknown)."""
        index = self.sync()
        with self._lock:
            known = [i for i in ids if i in index]
            unknown = [i for i in ids if i not in index]
            if known:
                pipe = self.client.pipeline(transaction=True)
                pipe.hdel(self._key("items"), *known)
                pipe.hdel(self._key("vec"), *known)
                pipe.incr(self._key("version"))
                version = int(pipe.execute()[-1])
                if version == self._version + 1:
                    index.remove(known)
                    self._version = version
        return known, unknown
