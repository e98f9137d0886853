"""Prompt log-probabilities: each token's log-probability given the tokens before it, with the most
likely tokens at each position. What an OpenAI-compatible server returns as ``logprobs`` (with
``echo``) and vLLM as ``prompt_logprobs``; what ``core.remote_engine`` builds label and
continuation scores from.

    rows = [engine.tokenize(prompt) + [label_token]]
    (row,) = engine.submit_prompt_logprobs(rows, model="sentiment", top_k=5).result()
    row.positions[-1].token.logprob          # log P(label_token | prompt)

Raw model log-probabilities (log-softmax of the logits, no temperature or other processing), as
vLLM's (``--logprobs-mode raw_logprobs``, its default). Rows that differ only in their last token
(a label's ``prompt + [token]`` rows) cost one pass; rows that share a prefix (a history's
``prefix + continuation`` rows) compute it once; the rest run batched, right-padded, so every token
keeps positions 0..n-1 whatever its batch.
"""

from __future__ import annotations

import copy
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from core.decoding import AdapterRows, output_cache
from core.errors import InputTooLargeError, InvalidRequestError

MAX_TOP_LOGPROBS = 20  # most alternatives per position; vLLM's default --max-logprobs
TOKEN_BUDGET = 1024  # tokens per forward: its [tokens, vocab] float32 log-probs stay ~200 MB at 49k vocab
MIN_SHARED = 16  # a prefix this long that rows share is computed once for them


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    rank: int  # 1 = the most likely token at its position


@dataclass
class PositionLogprobs:
    token: TokenLogprob  # the row's own token at this position
    top: list[TokenLogprob]  # the ``top_k`` most likely tokens here, most likely first


@dataclass
class RowLogprobs:
    token_ids: list[int]
    positions: list[PositionLogprobs | None]  # one per token; None for the first (nothing precedes it)
    text: str = ""  # the row decoded (what ``echo`` returns)
    pieces: dict[int, str] = field(default_factory=dict)  # (at least) each token id above, decoded alone

    def logprob_sum(self, start: int, stop: int | None = None) -> float:
        """Sum of the row's own token log-probabilities over positions ``start:stop`` (start >= 1)."""
        if start < 1:
            raise ValueError("the first token has no log-probability: start at 1 or later")
        return sum(p.token.logprob for p in self.positions[start:stop] if p is not None)


@runtime_checkable
class TokenScorer(Protocol):
    """An engine that tokenises and returns prompt log-probabilities (``LocalEngine``, ``RemoteEngine``)."""

    def tokenize(self, text: str) -> list[int]: ...

    def submit_prompt_logprobs(
        self, rows: list[list[int]], *, model: str = ..., top_k: int = 0
    ) -> Future[list[RowLogprobs]]: ...


def check_token_rows(rows: list[list[int]], *, vocab_size: int, max_rows: int, max_tokens: int, top_k: int) -> None:
    """Raise a 4xx-mapped error for rows an engine cannot score: none, too many, empty, too long,
    token ids outside the vocabulary, or ``top_k`` out of range."""
    if not 0 <= top_k <= MAX_TOP_LOGPROBS:
        raise InvalidRequestError(f"top log-probabilities must be between 0 and {MAX_TOP_LOGPROBS}, got {top_k}")
    if not rows:
        raise InvalidRequestError("give at least one prompt to score")
    if len(rows) > max_rows:
        raise InputTooLargeError(
            f"{len(rows)} prompts in one request; the limit is {max_rows}", limit=max_rows, actual=len(rows)
        )
    for row in rows:
        if not row:
            raise InvalidRequestError("each prompt of token ids must hold at least one token")
        if len(row) > max_tokens:
            raise InputTooLargeError(
                f"a prompt of {len(row)} tokens; the limit is {max_tokens}", limit=max_tokens, actual=len(row)
            )
        bad = next((t for t in row if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise InvalidRequestError(f"token id {bad} is outside the vocabulary (0 to {vocab_size - 1})")


def _chunks(rows: list[list[int]], indices: list[int], budget: int) -> list[list[int]]:
    """``indices`` in groups of similar row length whose padded size stays within ``budget`` tokens."""
    groups: list[list[int]] = []
    for i in sorted(indices, key=lambda i: len(rows[i])):
        if groups and len(rows[i]) * (len(groups[-1]) + 1) <= budget:
            groups[-1].append(i)  # sorted by length: row i is the widest of its group so far
        else:
            groups.append([i])
    return groups


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def shared_prefixes(rows: list[list[int]], min_shared: int = MIN_SHARED) -> list[tuple[list[int], int]]:
    """Runs of consecutive rows that share a prefix (at least ``min_shared`` tokens and half the first
    row), each as (row indices, prefix length; 0 for a row alone); the prefix leaves every row at least
    one token of its own. ``prefix + continuation`` rows share their prefix."""
    runs: list[tuple[list[int], int]] = []
    i = 0
    while i < len(rows):
        first, members, shared = rows[i], [i], len(rows[i]) - 1
        j = i + 1
        while j < len(rows):
            common = min(shared, _common(first, rows[j]), len(rows[j]) - 1)
            if common < max(min_shared, len(first) // 2):
                break
            members.append(j)
            shared = common
            j += 1
        runs.append((members, shared if len(members) > 1 else 0))
        i = j
    return runs


@torch.inference_mode()
def prompt_logprobs(
    model: torch.nn.Module,
    tokenizer: Any,
    rows: list[list[int]],
    adapter: str,
    adapter_rows: AdapterRows,
    pad_id: int,
    device: torch.device,
    *,
    top_k: int = 0,
    token_budget: int = TOKEN_BUDGET,
) -> list[RowLogprobs]:
    """Per row, each token's log-probability after the ones before it, its rank, and the ``top_k``
    most likely tokens at each position, with ``adapter`` applied through ``adapter_rows``.

    Work is shared where rows allow, with the same result as one forward per row: rows that differ
    only in their last token (a label's ``prompt + [token]`` rows) run their common part once and
    read every last token from its final distribution; rows that share a prefix (``prefix +
    continuation``, ``shared_prefixes``) run it once and repeat its KV cache over their own tokens,
    as ``core.scoring.score_continuations`` does; the rest run batched, right-padded."""
    results: list[RowLogprobs | None] = [None] * len(rows)
    pieces: dict[int, str] = {}
    by_base: dict[tuple[int, ...], list[int]] = {}  # a row without its last token -> the rows of that base
    for i, row in enumerate(rows):
        if len(row) == 1:
            results[i] = _result(row, [None], tokenizer, pieces)
        else:
            by_base.setdefault(tuple(row[:-1]), []).append(i)
    bases = [list(base) for base in by_base]
    heads: list[list[PositionLogprobs]] = [[] for _ in bases]  # per base, its tokens 1.. (as scored)
    after: list[torch.Tensor | None] = [None] * len(bases)  # per base, the logits that follow it: [vocab]
    alone: list[int] = []
    for members, shared in shared_prefixes(bases):
        if shared:
            _score_shared(model, bases, members, shared, adapter, adapter_rows, pad_id, device, top_k, heads, after)
        else:
            alone.extend(members)
    for group in _chunks(bases, alone, token_budget):
        n, width = len(group), max(len(bases[b]) for b in group)
        ids = torch.full((n, width), pad_id, dtype=torch.long)  # [n, width], right-padded
        mask = torch.zeros((n, width), dtype=torch.long)
        for j, b in enumerate(group):
            ids[j, : len(bases[b])] = torch.tensor(bases[b])
            mask[j, : len(bases[b])] = 1
        with adapter_rows([adapter] * n) as adapters:
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, **adapters.kwargs)
        for j, b in enumerate(group):
            size = len(bases[b])
            heads[b] = _positions(out.logits[j, : size - 1], bases[b][1:], top_k)
            after[b] = out.logits[j, size - 1]
    for b, members in enumerate(by_base.values()):
        following = after[b]
        assert following is not None  # every base was scored above
        lasts = _positions(following.expand(len(members), -1), [rows[i][-1] for i in members], top_k)
        for i, last in zip(members, lasts, strict=True):
            results[i] = _result(rows[i], [None, *heads[b], last], tokenizer, pieces)
    return [r for r in results if r is not None]


def _score_shared(
    model: torch.nn.Module,
    rows: list[list[int]],
    members: list[int],
    shared: int,
    adapter: str,
    adapter_rows: AdapterRows,
    pad_id: int,
    device: torch.device,
    top_k: int,
    heads: list[list[PositionLogprobs]],
    after: list[torch.Tensor | None],
    chunk_size: int = 64,
) -> None:
    """``heads`` and ``after`` of rows ``members``, whose first ``shared`` tokens are the same: that
    prefix runs once, then the rows' own tokens in one forward on its repeated KV cache."""
    prefix = rows[members[0]][:shared]
    with adapter_rows([adapter]) as adapters:
        out = model(input_ids=torch.tensor([prefix], device=device), use_cache=True, **adapters.kwargs)
    prefix_cache = output_cache(out)
    head = _positions(out.logits[0, : shared - 1], prefix[1:], top_k)  # tokens 1 .. shared - 1
    first_own = out.logits[0, shared - 1 : shared]  # [1, vocab]: what follows the prefix
    for start in range(0, len(members), chunk_size):
        chunk = members[start : start + chunk_size]
        n, width = len(chunk), max(len(rows[i]) - shared for i in chunk)
        ids = torch.full((n, width), pad_id, dtype=torch.long, device=device)  # [n, width], right-padded
        own_mask = torch.zeros((n, width), dtype=torch.long, device=device)
        for j, i in enumerate(chunk):
            ids[j, : len(rows[i]) - shared] = torch.tensor(rows[i][shared:], device=device)
            own_mask[j, : len(rows[i]) - shared] = 1
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(n)
        mask = torch.cat([torch.ones((n, shared), dtype=torch.long, device=device), own_mask], dim=1)
        position_ids = torch.arange(shared, shared + width, device=device).expand(n, width)
        with adapter_rows([adapter] * n) as adapters:
            own_out = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
                **adapters.kwargs,
            )
        for j, i in enumerate(chunk):
            own = len(rows[i]) - shared  # >= 1: the row's tokens after the prefix
            first = _positions(first_own, rows[i][shared : shared + 1], top_k)
            rest = _positions(own_out.logits[j, : own - 1], rows[i][shared + 1 :], top_k)
            heads[i] = [*head, *first, *rest]
            after[i] = own_out.logits[j, own - 1]


def _positions(logits: torch.Tensor, targets: list[int], top_k: int, slice_len: int = 256) -> list[PositionLogprobs]:
    """Per row of ``logits`` ([len(targets), vocab]), the log-probability and rank of its target token
    and the ``top_k`` most likely tokens, normalised a slice of positions at a time (a 5,000-token row
    never holds two [len, vocab] copies)."""
    out: list[PositionLogprobs] = []
    for start in range(0, len(targets), slice_len):
        stop = min(start + slice_len, len(targets))
        logprobs = torch.log_softmax(logits[start:stop].float(), dim=-1)  # [slice, vocab]
        wanted = torch.tensor(targets[start:stop], device=logprobs.device)  # [slice]
        own = logprobs.gather(-1, wanted[:, None]).squeeze(-1)  # [slice]
        ranks = ((logprobs > own[:, None]).sum(-1) + 1).cpu().tolist()  # [slice]
        own_l = own.cpu().tolist()
        top_v: list[list[float]] = [[] for _ in range(stop - start)]
        top_i: list[list[int]] = [[] for _ in range(stop - start)]
        if top_k:
            values, indices = logprobs.topk(top_k, dim=-1)  # [slice, top_k]
            top_v, top_i = values.cpu().tolist(), indices.cpu().tolist()
        for k in range(stop - start):
            top = [TokenLogprob(t, v, r + 1) for r, (t, v) in enumerate(zip(top_i[k], top_v[k], strict=True))]
            out.append(PositionLogprobs(TokenLogprob(targets[start + k], own_l[k], int(ranks[k])), top))
    return out


def _result(
    row: list[int], positions: list[PositionLogprobs | None], tokenizer: Any, pieces: dict[int, str]
) -> RowLogprobs:
    """The row's result; ``pieces`` (token id -> its text) is shared by every row of one call and
    filled as tokens first appear: rows that share a prefix decode it once."""
    for t in {*row, *(a.token_id for p in positions if p is not None for a in p.top)} - pieces.keys():
        pieces[t] = tokenizer.decode([t])
    return RowLogprobs(token_ids=list(row), positions=positions, text=tokenizer.decode(row), pieces=pieces)
