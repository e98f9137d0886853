"""Scoring without decoding: label probabilities and shared-prefix continuation scores.

``score_label_rows``: one forward pass over a left-padded batch of prompts; each row's next-token
distribution is restricted to the first tokens of its labels (surface variants such as "Negative"
and " negative" pooled per label) and renormalised. Labels whose first tokens collide are scored
by full continuation likelihood instead.

``score_continuations``: the prefix runs once; its KV cache is repeated across a batch of
continuations, so 50 candidates after a 500-token history cost one 500-token pass plus 50 short ones.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.decoding import AdapterRows, output_cache
from core.sampling import ContinuationScore


@dataclass
class LabelRow:
    prompt_ids: list[int]
    adapter: str
    label_tokens: list[list[int]]  # per label, the first-token ids of its surface variants


def label_first_tokens(tokenizer: Any, labels: list[str]) -> list[list[int]] | None:
    """First-token ids per label, pooled over surface variants; None when labels cannot be told apart
    by their first token (the caller then scores whole continuations)."""
    per_label: list[set[int]] = []
    for label in labels:
        variants = {label, label.lower(), label.capitalize(), label.upper()}
        variants |= {" " + v for v in variants}
        ids = set()
        for v in variants:
            toks = tokenizer.encode(v, add_special_tokens=False)
            if toks:
                ids.add(toks[0])
        per_label.append(ids)
    # a token shared by two labels says nothing about either: drop it from both
    counts: dict[int, int] = {}
    for token_set in per_label:
        for t in token_set:
            counts[t] = counts.get(t, 0) + 1
    cleaned = [sorted(t for t in token_set if counts[t] == 1) for token_set in per_label]
    canonical = [tokenizer.encode(label, add_special_tokens=False)[:1] for label in labels]
    for kept, canon in zip(cleaned, canonical, strict=True):
        if not kept or not canon or canon[0] not in kept:
            return None
    return cleaned


@torch.inference_mode()
def score_label_rows(
    model: torch.nn.Module,
    rows: list[LabelRow],
    adapter_rows: AdapterRows,
    pad_id: int,
    device: torch.device,
) -> list[list[float]]:
    """Per row, the probability of each of its labels (sums to 1)."""
    batch, width = len(rows), max(len(r.prompt_ids) for r in rows)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)  # [batch, width], left-padded
    mask = torch.zeros((batch, width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
        mask[i, width - len(r.prompt_ids) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with adapter_rows([r.adapter for r in rows]) as adapters:
        out = model(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            use_cache=False,
            logits_to_keep=1,
            **adapters.kwargs,
        )
    logprobs = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1).cpu()  # [batch, vocab]
    results = []
    for i, r in enumerate(rows):
        pooled = torch.stack([torch.logsumexp(logprobs[i, ids], dim=0) for ids in r.label_tokens])  # [labels]
        results.append(torch.softmax(pooled, dim=0).tolist())
    return results


@torch.inference_mode()
def score_continuations(
    model: torch.nn.Module,
    prefix_ids: list[int],
    continuations: list[list[int]],
    adapter: str,
    adapter_rows: AdapterRows,
    pad_id: int,
    device: torch.device,
    *,
    answer_tokens: list[list[int]] | None = None,
    answer_labels: list[str] | None = None,
    chunk_size: int = 64,
) -> list[ContinuationScore]:
    """Log-likelihood of each continuation after one shared prefix, computed with one prefix pass.

    With ``answer_tokens`` (per answer label, its first-token ids), each score also carries the
    probabilities of those answers right after the continuation, e.g. P("Yes") for a recommender.
    """
    prefix = torch.tensor([prefix_ids], device=device)  # [1, P]
    with adapter_rows([adapter]) as adapters:
        out = model(input_ids=prefix, use_cache=True, **adapters.kwargs)
    prefix_cache = output_cache(out)
    first_logprobs = torch.log_softmax(out.logits[0, -1, :].float(), dim=-1)  # [vocab]
    plen = len(prefix_ids)
    scores: list[ContinuationScore] = []
    for start in range(0, len(continuations), chunk_size):
        chunk = continuations[start : start + chunk_size]
        n, width = len(chunk), max(len(c) for c in chunk)
        ids = torch.full((n, width), pad_id, dtype=torch.long, device=device)  # [n, L], right-padded
        cont_mask = torch.zeros((n, width), dtype=torch.long, device=device)
        for i, c in enumerate(chunk):
            ids[i, : len(c)] = torch.tensor(c, device=device)
            cont_mask[i, : len(c)] = 1
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(n)
        mask = torch.cat([torch.ones((n, plen), dtype=torch.long, device=device), cont_mask], dim=1)
        positions = torch.arange(plen, plen + width, device=device).expand(n, width)
        with adapter_rows([adapter] * n) as adapters:  # the rows of the repeated prefix cache
            out = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                **adapters.kwargs,
            )
        logprobs = torch.log_softmax(out.logits.float(), dim=-1)  # [n, L, vocab]
        for i, c in enumerate(chunk):
            total = float(first_logprobs[c[0]])
            if len(c) > 1:
                idx = torch.tensor(c[1:], device=device)
                total += float(logprobs[i, torch.arange(len(c) - 1, device=device), idx].sum())
            next_probs = None
            if answer_tokens is not None and answer_labels is not None:
                last = logprobs[i, len(c) - 1]  # [vocab]: distribution after the whole continuation
                pooled = torch.stack([torch.logsumexp(last[t], dim=0) for t in answer_tokens])
                next_probs = dict(zip(answer_labels, torch.softmax(pooled, dim=0).tolist(), strict=True))
            scores.append(ContinuationScore(logprob=total, n_tokens=len(c), next_label_probs=next_probs))
    return scores


@torch.inference_mode()
def mean_hidden_states(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    device: torch.device,
    batch_size: int,
    adapter_rows: AdapterRows | None = None,
    adapter: str = "base",
) -> np.ndarray:
    """[n, hidden] float32 array: per text, the mean over its tokens of the decoder's final (normed)
    hidden state, with ``adapter`` applied through ``adapter_rows`` (or whatever ``model`` has active).

    Raw text, no template, right-padded so every real token keeps positions 0..len-1 and a text's
    features do not depend on its batch. The decoder alone: no vocabulary projection is computed.
    Features for a head fitted on them (``core.heads.LinearHead``)."""
    model.eval()
    decoder = model.get_decoder()  # a PeftModel forwards this to the LoRA-wrapped base
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx], add_special_tokens=False, padding=True, padding_side="right", return_tensors="pt"
        ).to(device)
        context = adapter_rows([adapter] * len(idx)) if adapter_rows is not None else nullcontext()
        with context:
            hidden = decoder(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state.float()
        mask = enc.attention_mask.unsqueeze(-1).float()  # [b, seq, 1]
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # [b, hidden]
        out[idx] = pooled.cpu().numpy()
    return out
