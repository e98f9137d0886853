"""Batched autoregressive decoding: tokenise -> prefill -> step loop -> detokenise.

One left-padded batch may mix adapters (``core.lora_stack``: one row context around all of a batch's
forwards), greedy and sampled rows, and rows with different limits and stop strings. Rows that
finish leave the batch (their KV-cache rows and their adapter rows are dropped), so a long request
does not make the short ones pay. Deltas are handed to each row's
``on_delta`` as soon as they are safe to show: never half a UTF-8 character, never the start of a
stop string that may still complete.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, cast

import torch

from core.lora_stack import RowAdapters
from core.sampling import Completion, SamplingParams

AdapterRows = Callable[[list[str]], AbstractContextManager[RowAdapters]]  # e.g. LoraRouter.rows


@dataclass
class DecodeRow:
    prompt_ids: list[int]
    adapter: str
    params: SamplingParams
    on_delta: Callable[[str], None] | None = None
    should_stop: Callable[[], bool] | None = None  # e.g. the streaming client went away


def _stop_holdback(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class _RowState:
    def __init__(self, row: DecodeRow, tokenizer: Any, eos_ids: set[int]) -> None:
        self.row = row
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.finish: str | None = None
        self.generator: torch.Generator | None = None
        if not row.params.greedy:
            self.generator = torch.Generator()
            seed = row.params.seed if row.params.seed is not None else int(torch.randint(0, 2**31, (1,)))
            self.generator.manual_seed(seed)

    @property
    def done(self) -> bool:
        return self.finish is not None

    def cancel(self) -> None:
        self.finish = "cancelled"

    def push(self, token_id: int) -> None:
        params = self.row.params
        if token_id in self.eos_ids and not params.ignore_eos:
            self.finish = "stop"
        else:
            self.ids.append(token_id)
            decoded = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            if not decoded.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                self.text = decoded
            if params.stop:
                cut = min((i for i in (self.text.find(s) for s in params.stop) if i >= 0), default=-1)
                if cut >= 0:
                    self.text = self.text[:cut]
                    self.finish = "stop"
            if self.finish is None and len(self.ids) >= params.max_new_tokens:
                self.finish = "length"
        self._emit()

    def _emit(self) -> None:
        safe = len(self.text) if self.done else len(self.text) - _stop_holdback(self.text, self.row.params.stop)
        if safe > self.emitted:
            if self.row.on_delta is not None:
                self.row.on_delta(self.text[self.emitted : safe])
            self.emitted = safe

    def completion(self) -> Completion:
        return Completion(
            text=self.text,
            finish_reason=self.finish or "length",
            prompt_tokens=len(self.row.prompt_ids),
            completion_tokens=len(self.ids),
            token_ids=list(self.ids),
        )


def _select(logits: torch.Tensor, states: list[_RowState]) -> torch.Tensor:
    """Pick one next token per row. logits: [b, vocab] float32 -> [b] int64."""
    out = torch.empty(logits.shape[0], dtype=torch.long)
    greedy_rows = [j for j, s in enumerate(states) if s.generator is None]
    if greedy_rows:
        out[greedy_rows] = logits[greedy_rows].argmax(dim=-1).cpu()
    for j, state in enumerate(states):
        if state.generator is None:
            continue
        params = state.row.params
        probs = torch.softmax(logits[j].cpu() / params.temperature, dim=-1)  # [vocab]
        if params.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < params.top_p
            keep[0] = True  # a top_p that underflows in float32 still keeps the most likely token
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        out[j] = torch.multinomial(probs, 1, generator=state.generator)[0]
    return out


def output_cache(out: Any) -> Any:
    """The KV cache of a model output: ``cache`` in newer transformers 5.x, ``past_key_values`` in older ones."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.inference_mode()
def decode_batch(
    model: torch.nn.Module,
    tokenizer: Any,
    rows: list[DecodeRow],
    adapter_rows: AdapterRows,
    eos_ids: set[int],
    device: torch.device,
) -> list[Completion]:
    """Greedy/sampled decoding of many rows at once; beam search goes through ``beam_search``."""
    states = [_RowState(r, tokenizer, eos_ids) for r in rows]
    batch, width = len(rows), max(len(r.prompt_ids) for r in rows)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)  # [batch, width], left-padded
    mask = torch.zeros((batch, width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
        mask[i, width - len(r.prompt_ids) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [batch, width]: pads do not shift positions
    input_ids, mask, positions = input_ids.to(device), mask.to(device), positions.to(device)

    with adapter_rows([r.adapter for r in rows]) as adapters:
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **adapters.kwargs,
        )
        cache = output_cache(out)
        logits = out.logits[:, -1, :].float()  # [batch, vocab]
        next_pos = positions[:, -1] + 1  # [batch]
        active = list(range(batch))  # row index of each batch slot

        while True:
            tokens = _select(logits, [states[i] for i in active])  # [active]
            for slot, i in enumerate(active):
                stop = rows[i].should_stop
                if stop is not None and stop():
                    states[i].cancel()
                else:
                    states[i].push(int(tokens[slot]))
            keep = [slot for slot, i in enumerate(active) if not states[i].done]
            if not keep:
                break
            if len(keep) < len(active):
                idx = torch.tensor(keep, device=device)
                cache.batch_select_indices(idx)
                adapters.select(keep)
                mask, next_pos, tokens = mask[idx], next_pos[idx], tokens[keep]
                active = [active[slot] for slot in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)  # [active, seq+1]
            out = model(
                input_ids=tokens.to(device)[:, None],
                attention_mask=mask,
                position_ids=next_pos[:, None],
                cache=cache,
                use_cache=True,
                **adapters.kwargs,
            )
            cache = output_cache(out)
            logits = out.logits[:, -1, :].float()
            next_pos = next_pos + 1
    return [s.completion() for s in states]


@torch.inference_mode()
def beam_search(
    model: torch.nn.Module,
    tokenizer: Any,
    row: DecodeRow,
    adapter_rows: AdapterRows,
    eos_ids: set[int],
    device: torch.device,
) -> Completion:
    params = row.params
    ids = torch.tensor([row.prompt_ids], device=device)  # [1, seq]
    # one adapter for the whole call: its paths do not depend on the row count, so the beams that
    # generate() expands the batch to need nothing more (on PEFT's adapter_names path PEFT repeats it)
    with adapter_rows([row.adapter]) as adapters:
        out = cast(Any, model).generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            num_beams=params.num_beams,
            do_sample=False,
            max_new_tokens=params.max_new_tokens,
            early_stopping=True,
            eos_token_id=sorted(eos_ids),
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else sorted(eos_ids)[0],
            **adapters.kwargs,
        )
    state = _RowState(DecodeRow(row.prompt_ids, row.adapter, params, row.on_delta), tokenizer, eos_ids)
    for token in out[0, ids.shape[1] :].tolist():
        state.push(int(token))
        if state.done:
            break
    return state.completion()
