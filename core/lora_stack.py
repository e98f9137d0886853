"""Mixed-adapter batches as three matmuls per LoRA layer instead of PEFT's per-adapter loop.

With ``adapter_names=[...]`` PEFT loops over the adapters present in the batch inside every LoRA
layer (gather the rows, two small matmuls, scale, scatter back): about six kernel launches per
adapter per layer, plus Python. At batch 32 on 2 CPU cores that made a decode step 66% slower than
the base model. Here PEFT's own layers are switched off and a forward hook on each LoRA layer adds
the batch's adapters: ``((x @ A_mix) * row_mask) @ B_mix``, where ``A_mix`` [in, R] and ``B_mix``
[R, out] hold the A and scaled B of a set of adapters side by side (the batch's own, or every
resident one: ``StackedLora._mix_keys``) and ``row_mask`` [batch, 1, R] keeps each row's own
adapter's columns (base rows: none). The waste is every row computing the other adapters' rank-r
projections: a few percent of a Linear's FLOPs with three rank-16 adapters, more with twenty
(bench/adapters_bench.py measures what it costs in throughput).

Adapters come and go between batches (an admin loads one; the registry pages them in and out by
LRU, ``core.adapters``), so the stacks are kept per adapter, not per set: ``sync`` prepares an
adapter's A and scaled B for each layer once when it becomes resident and drops them when it
leaves, work for that adapter alone. When the registry writes another adapter's weights into a
slot in place (its cold load under a full budget), ``sync`` sees a new config object for the same
key and writes the new tensors over the old ones, in the per-adapter tensors and in the cached
mixes (``_refill``): churn costs a copy of the incoming adapter, not a rebuild. A mixed batch
concatenates its set's tensors once (``_Mix``, the last few cached). Memory: a second copy of each
resident adapter's weights, plus the cached mixes (a third, for the adapters they hold).

``LoraRouter`` picks the cheapest correct path per batch:

    base        every row on the base: all adapter layers off, no hook work
    single      one stacked adapter for every row: ``(x @ A) @ B`` with that adapter's tensors
    stacked     mixed stacked adapters (and base rows): the row mask
    peft_active one adapter that cannot be stacked (DoRA, ...) for every row: PEFT's own forward
    peft_names  mixed, with an adapter that cannot be stacked: PEFT's ``adapter_names``

PEFT refuses ``adapter_names`` for DoRA, so ``groups`` splits a batch that mixes a DoRA adapter with
others into batches that each take one of the paths above. The router speaks served names
(``sentiment``, ``acme/support@v3``); the stacks and PEFT speak the registry's internal keys.

State lives on the model (layer switches, the current row mask), so the row contexts assume what
the engine guarantees: one thread runs every forward (``core.batching``), and nothing else uses the
model while a context is open. Leaving a context, even by an exception, restores PEFT's state, so
PEFT's ``adapter_names`` path and plain forwards outside a context never get the adapter twice.
"""

from __future__ import annotations

import functools
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from core.adapters import BASE, PEFT_BASE, AdapterRegistry

MIX_CACHE = 2  # stacks of the last mixed sets kept: each holds a copy of its adapters' weights
SEEN_SETS = 8  # the adapter sets of the last mixed batches remembered (a set seen again gets its own mix)


@dataclass
class _Layer:
    """One LoRA layer's stacked adapters, each ready to add: ``a`` [in, r] (lora_A transposed) and
    ``b`` [r, out] (lora_B times its scaling, transposed), in the dtype PEFT computes them in."""

    module: Any
    handle: Any
    own: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # key -> (a, b)


@dataclass
class _Mix:
    """The stacks of one set of adapters, for its mixed batches: per layer ``a`` [in, R], ``b`` [R, out]
    and the row-mask layout that fits their columns."""

    index: dict[str, int]  # key -> adapter index (the column owners below)
    layers: dict[int, tuple[torch.Tensor, torch.Tensor, int]]  # id(_Layer) -> (a, b, layout)
    owners: list[torch.Tensor]  # per layout: [R], the adapter index of each column
    dtypes: list[torch.dtype]  # per layout: the dtype its layers compute the adapters in
    columns: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)  # key -> id(_Layer) -> cols


class StackedLora:
    """The per-adapter stacks and the hooks for one ``PeftModel``, kept in step with the adapters it
    holds by ``sync`` (the router calls it before each batch)."""

    def __init__(self, peft_model: Any) -> None:
        self.model = peft_model
        # held, not just their ids: a reloaded adapter gets a new config object, which is how we notice
        self._configs: dict[str, Any] = {}
        self._layers: dict[int, _Layer] = {}  # id(module) -> its stacks
        self._switches: list[Any] = []  # every module with an adapter on/off switch (off while hooks work)
        self.stackable: frozenset[str] = frozenset()
        self.unmixable: frozenset[str] = frozenset()
        self._mixes: OrderedDict[tuple[str, ...], _Mix] = OrderedDict()
        self._seen: OrderedDict[tuple[str, ...], None] = OrderedDict()  # the last sets of mixed batches
        self._mix: _Mix | None = None  # set, with _masks, while a mixed batch runs
        self._masks: list[torch.Tensor] | None = None  # per layout: [batch, 1, R]
        self._single: str | None = None  # set when one stacked adapter serves every row
        self.sync_seconds = 0.0  # time spent in sync and in building mixes (for benches)
        self.sync()

    def matches(self, model: Any) -> bool:
        """Whether this was built on ``model`` (a new PeftModel, after every adapter left, is not)."""
        return model is self.model

    def sync(self) -> bool:
        """Bring the stacks in line with the adapters the model holds now: prepare the new ones, drop
        the ones that left (work for those adapters only). Returns whether anything changed."""
        current = dict(self.model.peft_config)
        gone = [k for k, cfg in self._configs.items() if current.get(k) is not cfg]
        new = [k for k, cfg in current.items() if self._configs.get(k) is not cfg]
        if not gone and not new:
            return False
        started = time.perf_counter()
        refilled = {k for k in set(gone) & set(new) if self._refill(k, current[k])}
        gone, new = [k for k in gone if k not in refilled], [k for k in new if k not in refilled]
        if gone or new:
            self._rebuild(current, gone, new)
        self.sync_seconds += time.perf_counter() - started
        return True

    def _rebuild(self, current: dict[str, Any], gone: list[str], new: list[str]) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        for key in gone:
            del self._configs[key]
            for layer in self._layers.values():
                layer.own.pop(key, None)
        self._switches = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer | AuxiliaryTrainingWrapper)]
        tuner_layers = [m for m in self._switches if isinstance(m, BaseTunerLayer)]
        stackable = set(self.stackable) - set(gone)
        for key in new:
            self._configs[key] = current[key]
            if _stackable(key, current[key], tuner_layers):
                self._prepare(key, tuner_layers)
                stackable.add(key)
        self.stackable = frozenset(stackable)
        self.unmixable = frozenset(k for k, cfg in self._configs.items() if getattr(cfg, "use_dora", False))
        self._mixes.clear()

    @torch.no_grad()
    def _refill(self, key: str, cfg: Any) -> bool:
        """The same slot with new weights of the same shapes (the registry's slot reuse): prepare them
        from the layers that held the old ones and write them into the cached mixes in place, with no
        walk over the model and no new stacks. False when that does not fit (the caller rebuilds)."""
        holders = [layer for layer in self._layers.values() if key in layer.own]
        if key not in self.stackable or not holders or not _stackable(key, cfg, [h.module for h in holders]):
            return False
        with torch.inference_mode(False):
            pairs = {id(h): _pair(h.module, key) for h in holders}
            if any(
                (a.shape, b.shape, a.dtype) != (h.own[key][0].shape, h.own[key][1].shape, h.own[key][0].dtype)
                for h in holders
                for a, b in [pairs[id(h)]]
            ):
                return False
            for h in holders:
                h.own[key] = pairs[id(h)]
            for mix in self._mixes.values():
                for layer_id, (start, end) in mix.columns.get(key, {}).items():
                    a_mix, b_mix, _ = mix.layers[layer_id]
                    a_mix[:, start:end].copy_(pairs[layer_id][0])
                    b_mix[start:end].copy_(pairs[layer_id][1])
        self._configs[key] = cfg
        return True

    @torch.no_grad()
    def _prepare(self, key: str, tuner_layers: list[Any]) -> None:
        from peft.tuners.lora import Linear as LoraLinear

        with torch.inference_mode(False):  # plain tensors, usable in and out of inference mode
            for module in tuner_layers:
                if type(module) is not LoraLinear or key not in module.lora_A:
                    continue
                layer = self._layers.get(id(module))
                if layer is None or layer.module is not module:
                    layer = _Layer(module, None)
                    layer.handle = module.register_forward_hook(functools.partial(self._hook, layer))
                    self._layers[id(module)] = layer
                layer.own[key] = _pair(module, key)

    def close(self) -> None:
        for layer in self._layers.values():
            layer.handle.remove()
        self._layers, self._mixes = {}, OrderedDict()

    def _hook(self, layer: _Layer, module: Any, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
        if self._mix is not None:
            entry = self._mix.layers.get(id(layer))
            if entry is None:  # none of the batch's adapters has this layer
                return None
            a, b, layout = entry
            x = args[0].to(a.dtype)  # adapters may be float32 under a bf16 base, as in PEFT
            return out + (((x @ a) * self._masks[layout]) @ b).to(out.dtype)  # type: ignore[index]  # [batch, seq, out]
        pair = layer.own.get(self._single) if self._single is not None else None
        if pair is not None:
            a, b = pair
            return out + ((args[0].to(a.dtype) @ a) @ b).to(out.dtype)
        return None  # no context open, or this layer lacks the adapter: PEFT's result as it is

    def _mix_of(self, keys: tuple[str, ...]) -> _Mix:
        """The stacks for the adapters ``keys`` (sorted), built on first use and cached."""
        mix = self._mixes.get(keys)
        if mix is not None:
            self._mixes.move_to_end(keys)
            return mix
        started = time.perf_counter()
        index = {k: i for i, k in enumerate(keys)}
        mix = _Mix(index, {}, [], [])
        layouts: dict[tuple[Any, ...], int] = {}
        with torch.no_grad(), torch.inference_mode(False):
            for layer in self._layers.values():
                names = [k for k in keys if k in layer.own]
                if not names:
                    continue
                pairs = [layer.own[k] for k in names]
                dtype = functools.reduce(torch.promote_types, [a.dtype for a, _ in pairs])
                a = torch.cat([a.to(dtype) for a, _ in pairs], 1)  # [in, R]
                b = torch.cat([b.to(dtype) for _, b in pairs], 0)  # [R, out]
                ranks = tuple(p[0].shape[1] for p in pairs)
                layout_key = (tuple(names), ranks, dtype, a.device)
                if layout_key not in layouts:
                    layouts[layout_key] = len(mix.owners)
                    owner = [index[n] for n, r in zip(names, ranks, strict=True) for _ in range(r)]
                    mix.owners.append(torch.tensor(owner, device=a.device))
                    mix.dtypes.append(dtype)
                mix.layers[id(layer)] = (a, b, layouts[layout_key])
                start = 0
                for n, r in zip(names, ranks, strict=True):
                    mix.columns.setdefault(n, {})[id(layer)] = (start, start + r)
                    start += r
        self._mixes[keys] = mix
        while len(self._mixes) > MIX_CACHE:
            self._mixes.popitem(last=False)
        self.sync_seconds += time.perf_counter() - started
        return mix

    @contextmanager
    def apply(self, keys: list[str]) -> Iterator[None]:
        """Every forward in the block adds row i's adapter ``keys[i]`` (``PEFT_BASE``: none) through
        the hooks; every key is stackable."""
        # PEFT's private switch: its public toggles also walk the whole model and flip requires_grad
        # on every adapter weight (on, when re-enabling), and all we want here is the switch
        flags = [m._disable_adapters for m in self._switches]
        try:
            for m in self._switches:
                m._disable_adapters = True
            adapters = sorted(set(keys) - {PEFT_BASE})
            if len(set(keys)) == 1 and adapters:
                self._single = keys[0]
            elif adapters:
                self._mix = self._mix_of(self._mix_keys(tuple(adapters)))
                self._masks = self._row_masks(self._mix, keys)
            yield
        finally:
            self._mix, self._masks, self._single = None, None, None
            for m, flag in zip(self._switches, flags, strict=True):
                m._disable_adapters = flag

    def _mix_keys(self, present: tuple[str, ...]) -> tuple[str, ...]:
        """Which set to stack for a batch of the adapters ``present``: every resident stackable adapter
        when the batch holds half of them or more; else their own set when it is cached or came
        before (a steady mix, worth its copy); else every one when that mix is cached (it stays valid
        while the resident set does, and a slot that takes new weights is refilled in place, so churn
        copies nothing per batch); else their own."""
        every = tuple(sorted(self.stackable))
        seen = present in self._seen
        self._seen[present] = None
        self._seen.move_to_end(present)
        while len(self._seen) > SEEN_SETS:
            self._seen.popitem(last=False)
        if 2 * len(present) >= len(every):
            return every
        if present in self._mixes or seen:
            return present
        return every if every in self._mixes else present

    @staticmethod
    def _row_masks(mix: _Mix, keys: list[str]) -> list[torch.Tensor]:
        masks = []
        for owner, dtype in zip(mix.owners, mix.dtypes, strict=True):
            rows = torch.tensor([mix.index.get(k, -1) for k in keys], device=owner.device)  # [batch]
            masks.append((rows[:, None] == owner[None, :]).to(dtype)[:, None, :])  # [batch, 1, R]
        return masks

    def select(self, keep: list[int]) -> None:
        """Rows ``keep`` stay in the batch (finished rows left it, their KV-cache rows dropped)."""
        if self._masks:
            idx = torch.tensor(keep, device=self._masks[0].device)
            self._masks = [m[idx] for m in self._masks]


def _pair(module: Any, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A LoRA layer's adapter ``key`` ready to add: A transposed [in, r], B times its scaling
    transposed [r, out], in the dtype PEFT computes them in."""
    a_weight: torch.Tensor = module.lora_A[key].weight  # [r, in]
    b_weight: torch.Tensor = module.lora_B[key].weight  # [out, r]
    dtype = torch.promote_types(a_weight.dtype, b_weight.dtype)
    a = a_weight.to(dtype).t().contiguous()  # [in, r]
    b = (b_weight * module.scaling[key]).to(dtype).t().contiguous()  # [r, out]
    return a, b


def _stackable(key: str, cfg: Any, tuner_layers: list[Any]) -> bool:
    """Plain LoRA on ``nn.Linear`` layers only: anything else needs PEFT's own forward."""
    from peft import LoraConfig
    from peft.tuners.lora import Linear as LoraLinear

    if not isinstance(cfg, LoraConfig):
        return False
    if cfg.use_dora or cfg.lora_bias or cfg.modules_to_save or cfg.trainable_token_indices:
        return False
    holding = [m for m in tuner_layers if any(key in getattr(m, attr, {}) for attr in m.adapter_layer_names)]
    return all(type(m) is LoraLinear and key not in m.lora_variant for m in holding)


class RowAdapters:
    """How the forwards of one batch apply each row's adapter: ``kwargs`` for each forward call, and
    ``select`` when rows leave the batch."""

    def __init__(self, *, peft_names: list[str] | None = None, stack: StackedLora | None = None) -> None:
        self._names = peft_names
        self._stack = stack

    @property
    def kwargs(self) -> dict[str, Any]:
        return {} if self._names is None else {"adapter_names": self._names}

    def select(self, keep: list[int]) -> None:
        if self._names is not None:
            self._names = [self._names[i] for i in keep]
        if self._stack is not None:
            self._stack.select(keep)


@contextmanager
def _active_adapter(peft_model: Any, key: str) -> Iterator[None]:
    previous = peft_model.active_adapter
    peft_model.set_adapter(key, inference_mode=True)
    try:
        yield
    finally:
        peft_model.set_adapter(previous, inference_mode=True)


class LoraRouter:
    """Per-batch LoRA for the registry's model: makes the batch's adapters resident (``acquire``),
    keeps the stacks in step with them, and picks the path for each batch. ``paths`` counts the
    paths taken (for tests, benches, debugging)."""

    def __init__(self, registry: AdapterRegistry) -> None:
        self._registry = registry
        self._stack: StackedLora | None = None
        self._open = False
        self.paths: Counter[str] = Counter()

    @property
    def sync_seconds(self) -> float:
        """Seconds spent keeping the stacks in step with the resident adapters, this stack's life."""
        return self._stack.sync_seconds if self._stack is not None else 0.0

    def _current(self) -> StackedLora | None:
        model = self._registry.model if self._registry.has_adapters else None
        if self._stack is not None and (model is None or not self._stack.matches(model)):
            self._stack.close()
            self._stack = None
        if model is not None:
            if self._stack is None:
                self._stack = StackedLora(model)
            else:
                self._stack.sync()
        return self._stack

    def groups(self, names: list[str]) -> list[list[int]]:
        """Row indices of the batches to run instead of one: a single group unless an adapter that
        PEFT cannot mix (DoRA) shares the batch with others; then it goes alone. The adapters must be
        resident (the engine acquires each group's before asking)."""
        stack = self._current()
        keys = {n: self._registry.resolve(n) for n in set(names)}
        apart = {n for n, k in keys.items() if stack is not None and k in stack.unmixable}
        if not apart or len(set(names)) == 1:
            return [list(range(len(names)))]
        groups: dict[str | None, list[int]] = {}
        for i, name in enumerate(names):
            groups.setdefault(name if name in apart else None, []).append(i)
        return list(groups.values())

    @contextmanager
    def rows(self, names: list[str]) -> Iterator[RowAdapters]:
        """Open for the forwards of one batch whose row i uses adapter ``names[i]`` (``BASE``: none).
        The adapters are made resident first (cold loads, LRU evictions); one that cannot be served
        raises (``AdapterNotFoundError``, ``AdapterLoadError``). Contexts do not nest."""
        if self._open:
            raise RuntimeError("LoraRouter.rows() contexts do not nest")
        failures = self._registry.acquire(names)
        if failures:
            raise next(iter(failures.values()))
        keys = [self._registry.resolve(n) for n in names]
        path, context, rows = self._plan(self._current(), keys)
        self._open = True
        try:
            with context:
                self.paths[path] += 1
                yield rows
        finally:
            self._open = False

    @staticmethod
    def _plan(stack: StackedLora | None, keys: list[str]) -> tuple[str, AbstractContextManager[Any], RowAdapters]:
        adapters = set(keys) - {PEFT_BASE}
        if stack is None:  # no adapter resident: the registry's model is the plain base
            return "base", nullcontext(), RowAdapters()
        if adapters <= stack.stackable:
            path = "base" if not adapters else "single" if len(set(keys)) == 1 else "stacked"
            return path, stack.apply(keys), RowAdapters(stack=stack)
        if len(set(keys)) == 1:
            return "peft_active", _active_adapter(stack.model, keys[0]), RowAdapters()
        if adapters & stack.unmixable:
            raise ValueError("adapters that PEFT cannot mix (DoRA) cannot share a batch: use groups()")
        return "peft_names", nullcontext(), RowAdapters(peft_names=keys)


__all__ = ["BASE", "LoraRouter", "RowAdapters", "StackedLora"]
