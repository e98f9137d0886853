"""Baselines of the Games-6k evaluation that the MovieLens one does not have: item-kNN over
co-purchases, and a small SASRec (self-attention over the sequence, the classic sequential bar).

Both learn only from the fit histories (each user's sequence less its last item), score every item
(full ranking) and any given items (the 20-candidate protocol). Their one or two settings are chosen
on the dev users' last items, never on the report users'.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from scipy.sparse import csr_matrix
from torch import nn

from finetune.evals.recommend import System, top_k_excluding
from finetune.ranker import ndcg_at_k

SEED = 42
log = logging.getLogger(__name__)


def interaction_matrix(histories: dict[str, list[str]], col: dict[str, int]) -> tuple[csr_matrix, dict[str, int]]:
    """[users, items] binary matrix of the histories, and user -> row."""
    row = {u: n for n, u in enumerate(histories)}
    rows, cols = [], []
    for u, items in histories.items():
        for i in set(items):
            rows.append(row[u])
            cols.append(col[i])
    matrix = csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(row), len(col)), dtype=np.float32
    )
    return matrix, row


class ItemKNN(System):
    """Item-item cosine over co-purchases (two items bought by the same users), summed over the
    user's history with a recency weight ``decay`` per step back."""

    def __init__(self, histories: dict[str, list[str]], item_ids: list[str], decay: float = 0.7) -> None:
        self.name = "item_knn"
        self.ids = item_ids
        self.col = {i: n for n, i in enumerate(item_ids)}
        self.histories = histories
        self.decay = decay
        matrix, _ = interaction_matrix(histories, self.col)
        counts = np.asarray(matrix.sum(axis=0)).ravel()  # [items]
        co = (matrix.T @ matrix).tocsr()  # [items, items] users who bought both
        co.setdiag(0)
        co.eliminate_zeros()
        norm = np.sqrt(np.maximum(counts, 1.0))
        # cosine: co[a, b] / sqrt(n_a * n_b)
        self.sim = csr_matrix(co.multiply(1.0 / norm[:, None]).multiply(1.0 / norm[None, :]))
        self.tiebreak = 1e-6 * counts / max(float(counts.max()), 1.0)  # popularity orders the unrelated

    def _all(self, user: str) -> np.ndarray:
        cols = [self.col[i] for i in self.histories[user]]
        weights = np.asarray([self.decay ** (len(cols) - 1 - k) for k in range(len(cols))])
        return np.asarray(self.sim[cols].T @ weights).ravel() + self.tiebreak  # [items]

    def top(self, user: str, seen: set[str]) -> list[str]:
        return top_k_excluding(self._all(user), self.ids, seen)

    def scores(self, user: str, ids: list[str]) -> np.ndarray:
        return self._all(user)[[self.col[i] for i in ids]]


# ---- SASRec ---------------------------------------------------------------------------------------


class SASRec(System):
    """Self-attentive sequential recommendation (Kang & McAuley 2018), small: item and position
    embeddings, two causal self-attention blocks, the output tied to the item embeddings, trained
    with a sampled softmax (the next item against ``negatives`` uniformly drawn items, shared by a
    batch) on every next item of the fit histories: full-softmax quality at a few per cent of its
    cost over 16,859 products. Epochs run until ``epochs``, ``minutes`` (checked every batch) or
    ``patience`` epochs without a better dev NDCG@10; the epoch with the best one is kept."""

    name = "sasrec"

    def __init__(
        self,
        histories: dict[str, list[str]],
        item_ids: list[str],
        dev: Sequence[tuple[str, str]],
        *,
        dim: int = 64,
        max_len: int = 20,
        epochs: int = 60,
        minutes: float = 45.0,
        patience: int = 4,
        batch_size: int = 128,
        lr: float = 2e-3,
        negatives: int = 512,
    ) -> None:
        """``dev``: (user, that user's held-out last item) pairs that choose the epoch."""
        torch.manual_seed(SEED)
        self.ids = item_ids
        self.col = {i: n + 1 for n, i in enumerate(item_ids)}  # 0 pads
        self.max_len = max_len
        self.histories = histories
        self.model = SASRecNet(len(item_ids) + 1, dim, max_len)
        optimiser = torch.optim.Adam(self.model.parameters(), lr=lr)
        seqs = [[self.col[i] for i in h][-(max_len + 1) :] for h in histories.values() if len(h) >= 2]
        rng = np.random.default_rng(SEED)
        started = time.monotonic()
        best, best_state, self.log = -1.0, None, []
        for epoch in range(epochs):
            self.model.train()
            order = rng.permutation(len(seqs))
            total, seen = 0.0, 0
            for start in range(0, len(order), batch_size):
                batch = [seqs[j] for j in order[start : start + batch_size]]
                inputs = self._pad([s[:-1] for s in batch])  # [b, L]
                targets = self._pad([s[1:] for s in batch])  # [b, L], 0 where padded
                hidden = self.model(inputs)  # [b, L, dim]
                keep = targets > 0
                positives = targets[keep]  # [n]
                # sampled softmax: the next item against ``negatives`` items drawn uniformly for the
                # batch (uniform: no log-q correction); a draw that is the positive itself is masked
                drawn = torch.from_numpy(rng.integers(1, len(item_ids) + 1, size=negatives))  # [k]
                h = hidden[keep]  # [n, dim]
                positive = (h * self.model.items(positives)).sum(-1, keepdim=True)  # [n, 1]
                sampled = h @ self.model.items(drawn).T  # [n, k]
                sampled = sampled.masked_fill(drawn[None, :] == positives[:, None], -1e9)
                logits = torch.cat([positive, sampled], 1)  # [n, 1 + k]
                loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(positives), dtype=torch.long))
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(batch)
                seen += len(batch)
                if time.monotonic() - started > minutes * 60:
                    break
            score = self._dev_ndcg(dev)
            self.log.append({"epoch": epoch + 1, "loss": total / max(seen, 1), "dev_ndcg@10": score, "sequences": seen})
            log.info("sasrec epoch %d: loss %.4f, dev NDCG@10 %.4f", epoch + 1, self.log[-1]["loss"], score)
            if score > best:
                best, best_state = score, {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            elif epoch + 1 - max(e["epoch"] for e in self.log if e["dev_ndcg@10"] == best) >= patience:
                break  # no better dev NDCG for ``patience`` epochs
            if time.monotonic() - started > minutes * 60:
                break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        self.model.eval()
        self.seconds = time.monotonic() - started
        self._cache: dict[str, np.ndarray] = {}

    def _pad(self, rows: list[list[int]]) -> torch.Tensor:
        out = torch.zeros((len(rows), self.max_len), dtype=torch.long)  # [b, L], left-padded
        for n, r in enumerate(rows):
            r = r[-self.max_len :]
            if r:
                out[n, self.max_len - len(r) :] = torch.tensor(r)
        return out

    def _user_scores(self, histories: list[list[str]]) -> np.ndarray:
        """[len(histories), items] scores after each history."""
        with torch.inference_mode():
            hidden = self.model(self._pad([[self.col[i] for i in h] for h in histories]))[:, -1]  # [b, dim]
            return (hidden @ self.model.items.weight[1:].T).numpy()  # [b, items]

    def _dev_ndcg(self, dev: Sequence[tuple[str, str]]) -> float:
        self.model.eval()
        total = 0.0
        for start in range(0, len(dev), 256):
            chunk = dev[start : start + 256]
            scores = self._user_scores([self.histories[u] for u, _ in chunk])
            for row, (u, target) in zip(scores, chunk, strict=True):
                row[[self.col[i] - 1 for i in self.histories[u]]] = -np.inf
                rank = int((row > row[self.col[target] - 1]).sum())
                total += ndcg_at_k(rank)
        return total / max(len(dev), 1)

    def _all(self, user: str) -> np.ndarray:
        if user not in self._cache:
            self._cache[user] = self._user_scores([self.histories[user]])[0]
        return self._cache[user]

    def top(self, user: str, seen: set[str]) -> list[str]:
        return top_k_excluding(self._all(user), self.ids, seen)

    def scores(self, user: str, ids: list[str]) -> np.ndarray:
        return self._all(user)[[self.col[i] - 1 for i in ids]]


class SASRecNet(nn.Module):
    def __init__(self, n_items: int, dim: int, max_len: int) -> None:
        super().__init__()
        self.dim = dim
        self.items = nn.Embedding(n_items, dim, padding_idx=0)
        self.positions = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(
            dim, nhead=2, dim_feedforward=dim, dropout=0.2, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(0.2)
        nn.init.normal_(self.items.weight, std=1.0 / math.sqrt(dim))

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq: [b, L] item codes, left-padded with 0 -> [b, L, dim]."""
        length = seq.shape[1]
        x = self.items(seq) * math.sqrt(self.dim) + self.positions(torch.arange(length))[None]
        x = self.dropout(x) * (seq > 0).unsqueeze(-1)
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
        # as SASRec: causal attention only; pads are zero vectors, and zeroed again after the blocks
        out = self.blocks(x, mask=causal)
        return self.norm(out) * (seq > 0).unsqueeze(-1)
