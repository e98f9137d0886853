"""Mixed-adapter batches as three matmuls per LoRA layer instead of PEFT's per-adapter loop.

With ``adapter_names=[...]`` PEFT loops over the adapters present in the batch inside every LoRA
layer (gather the rows, two small matmuls, scale, scatter back): about six kernel launches per
adapter per layer, plus Python. At batch 32 on 2 CPU cores that made a decode step 66% slower than
the base model. Here every plain LoRA adapter's A and scaled B are stacked once per layer, PEFT's
own layers are switched off, and a forward hook adds ``((x @ A_all) * row_mask) @ B_all``, where
``row_mask`` [batch, 1, sum of ranks] keeps each row's own adapter's columns (base rows: none). The
waste is every row computing every adapter's rank-r projection, a few percent of a Linear's FLOPs.

``LoraRouter`` picks the cheapest correct path per batch:

    base        every row on the base: all adapter layers off, no hook work
    single      one stacked adapter for every row: ``(x @ A) @ B`` with that adapter's slices
    stacked     mixed stacked adapters (and base rows): the row mask
    peft_active one adapter that cannot be stacked (DoRA, ...) for every row: PEFT's own forward
    peft_names  mixed, with an adapter that cannot be stacked: PEFT's ``adapter_names``

PEFT refuses ``adapter_names`` for DoRA, so ``groups`` splits a batch that mixes a DoRA adapter with
others into batches that each take one of the paths above.

State lives on the model (layer switches, the current row mask), so the row contexts assume what
the engine guarantees: one thread runs every forward (``core.batching``), and nothing else uses the
model while a context is open. Leaving a context, even by an exception, restores PEFT's state, so
PEFT's ``adapter_names`` path and plain forwards outside a context never get the adapter twice.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from core.adapters import BASE, AdapterRegistry


@dataclass
class _LayerStack:
    """One LoRA layer's stacked adapters (in adapter order; the layer may hold only some of them)."""

    a: torch.Tensor  # [in, R]: every adapter's lora_A, transposed, side by side
    b: torch.Tensor  # [R, out]: their lora_B times scaling, transposed
    layout: int  # index of the row mask that fits these columns
    single: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # name -> views of a, b


class StackedLora:
    """The stacks and hooks for one ``PeftModel`` as loaded; rebuilt (by ``LoraRouter``) on any change.

    Memory: a second copy of each stacked adapter's weights (a few MB per adapter).
    """

    def __init__(self, peft_model: Any) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        self.model = peft_model
        # held, not just their ids: a reloaded adapter gets a new config object, which is how we notice
        self._configs = list(peft_model.peft_config.items())
        # every module with an adapter on/off switch: all of them are off while the hooks do the work
        self._switches = [m for m in peft_model.modules() if isinstance(m, BaseTunerLayer | AuxiliaryTrainingWrapper)]
        tuner_layers = [m for m in self._switches if isinstance(m, BaseTunerLayer)]
        self.stackable = frozenset(n for n, cfg in self._configs if _stackable(n, cfg, tuner_layers))
        self.unmixable = frozenset(n for n, cfg in self._configs if getattr(cfg, "use_dora", False))
        self._index = {name: i for i, name in enumerate(sorted(self.stackable))}
        self._owners: list[torch.Tensor] = []  # per layout: [R], the adapter index of each column
        self._dtypes: list[torch.dtype] = []  # per layout: the dtype its layers compute the adapters in
        self._layers: list[_LayerStack] = []
        self._handles: list[Any] = []
        self._masks: list[torch.Tensor] | None = None  # per layout: [batch, 1, R]; set for mixed batches
        self._single: str | None = None  # set when one stacked adapter serves every row
        self._build(tuner_layers)

    @torch.no_grad()
    def _build(self, tuner_layers: list[Any]) -> None:
        from peft.tuners.lora import Linear as LoraLinear

        layouts: dict[tuple[Any, ...], int] = {}
        with torch.inference_mode(False):  # plain tensors, usable in and out of inference mode
            for module in tuner_layers:
                names = [n for n in self._index if type(module) is LoraLinear and n in module.lora_A]
                if not names:
                    continue
                dtype = functools.reduce(torch.promote_types, [module.lora_A[n].weight.dtype for n in names])
                a = torch.cat([module.lora_A[n].weight.to(dtype) for n in names], 0).t().contiguous()  # [in, R]
                b = torch.cat([(module.lora_B[n].weight * module.scaling[n]).to(dtype) for n in names], 1)
                b = b.t().contiguous()  # [R, out]
                ranks = [module.lora_A[n].weight.shape[0] for n in names]
                key = (tuple(zip(names, ranks, strict=True)), dtype, a.device)
                if key not in layouts:
                    layouts[key] = len(self._owners)
                    owner = [self._index[n] for n, r in zip(names, ranks, strict=True) for _ in range(r)]
                    self._owners.append(torch.tensor(owner, device=a.device))
                    self._dtypes.append(dtype)
                layer = _LayerStack(a, b, layouts[key])
                start = 0
                for n, r in zip(names, ranks, strict=True):
                    layer.single[n] = (a[:, start : start + r], b[start : start + r])  # [in, r], [r, out]
                    start += r
                self._layers.append(layer)
                self._handles.append(module.register_forward_hook(functools.partial(self._hook, layer)))

    def matches(self, model: Any) -> bool:
        """Whether this was built from ``model`` with the adapters it holds now."""
        current = getattr(model, "peft_config", {})
        return (
            model is self.model
            and len(current) == len(self._configs)
            and all(current.get(name) is cfg for name, cfg in self._configs)
        )

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._layers = [], []

    def _hook(self, layer: _LayerStack, module: Any, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
        if self._masks is not None:
            x = args[0].to(layer.a.dtype)  # adapters may be float32 under a bf16 base, as in PEFT
            return out + (((x @ layer.a) * self._masks[layer.layout]) @ layer.b).to(out.dtype)  # [batch, seq, out]
        pair = layer.single.get(self._single) if self._single is not None else None
        if pair is not None:
            a, b = pair
            return out + ((args[0].to(a.dtype) @ a) @ b).to(out.dtype)
        return None  # no context open, or this layer lacks the adapter: PEFT's result as it is

    @contextmanager
    def apply(self, names: list[str]) -> Iterator[None]:
        """Every forward in the block adds row i's adapter ``names[i]`` (``BASE``: none) through the hooks."""
        # PEFT's private switch: its public toggles also walk the whole model and flip requires_grad
        # on every adapter weight (on, when re-enabling), and all we want here is the switch
        flags = [m._disable_adapters for m in self._switches]
        try:
            for m in self._switches:
                m._disable_adapters = True
            adapters = set(names) - {BASE}
            if len(set(names)) == 1 and adapters:
                self._single = names[0]
            elif adapters:
                self._masks = self._row_masks(names)
            yield
        finally:
            self._masks, self._single = None, None
            for m, flag in zip(self._switches, flags, strict=True):
                m._disable_adapters = flag

    def _row_masks(self, names: list[str]) -> list[torch.Tensor]:
        masks = []
        for owner, dtype in zip(self._owners, self._dtypes, strict=True):
            rows = torch.tensor([self._index.get(n, -1) for n in names], device=owner.device)  # [batch]
            masks.append((rows[:, None] == owner[None, :]).to(dtype)[:, None, :])  # [batch, 1, R]
        return masks

    def select(self, keep: list[int]) -> None:
        """Rows ``keep`` stay in the batch (finished rows left it, their KV-cache rows dropped)."""
        if self._masks:
            idx = torch.tensor(keep, device=self._masks[0].device)
            self._masks = [m[idx] for m in self._masks]


def _stackable(name: str, cfg: Any, tuner_layers: list[Any]) -> bool:
    """Plain LoRA on ``nn.Linear`` layers only: anything else needs PEFT's own forward."""
    from peft import LoraConfig
    from peft.tuners.lora import Linear as LoraLinear

    if not isinstance(cfg, LoraConfig):
        return False
    if cfg.use_dora or cfg.lora_bias or cfg.modules_to_save or cfg.trainable_token_indices:
        return False
    holding = [m for m in tuner_layers if any(name in getattr(m, attr, {}) for attr in m.adapter_layer_names)]
    return all(type(m) is LoraLinear and name not in m.lora_variant for m in holding)


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
def _active_adapter(peft_model: Any, name: str) -> Iterator[None]:
    previous = peft_model.active_adapter
    peft_model.set_adapter(name, inference_mode=True)
    try:
        yield
    finally:
        peft_model.set_adapter(previous, inference_mode=True)


class LoraRouter:
    """Per-batch LoRA for the registry's model: the path for each batch, stacks rebuilt lazily when
    the loaded adapters change. ``paths`` counts the paths taken (for tests, benches, debugging)."""

    def __init__(self, registry: AdapterRegistry) -> None:
        self._registry = registry
        self._stack: StackedLora | None = None
        self._open = False
        self.paths: Counter[str] = Counter()

    def _current(self) -> StackedLora | None:
        model = self._registry.model if self._registry.has_adapters else None
        if self._stack is not None and (model is None or not self._stack.matches(model)):
            self._stack.close()
            self._stack = None
        if model is not None and self._stack is None:
            self._stack = StackedLora(model)
        return self._stack

    def groups(self, names: list[str]) -> list[list[int]]:
        """Row indices of the batches to run instead of one: a single group unless an adapter that
        PEFT cannot mix (DoRA) shares the batch with others; then it goes alone."""
        stack = self._current()
        apart = set(names) & stack.unmixable if stack is not None else set()
        if not apart or len(set(names)) == 1:
            return [list(range(len(names)))]
        groups: dict[str | None, list[int]] = {}
        for i, name in enumerate(names):
            groups.setdefault(name if name in apart else None, []).append(i)
        return list(groups.values())

    @contextmanager
    def rows(self, names: list[str]) -> Iterator[RowAdapters]:
        """Open for the forwards of one batch whose row i uses adapter ``names[i]`` (``BASE``: none).
        Unknown names raise ``AdapterNotFoundError``; contexts do not nest."""
        peft_names = [self._registry.resolve(n) for n in names]
        if self._open:
            raise RuntimeError("LoraRouter.rows() contexts do not nest")
        path, context, rows = self._plan(self._current(), names, peft_names)
        self._open = True
        try:
            with context:
                self.paths[path] += 1
                yield rows
        finally:
            self._open = False

    @staticmethod
    def _plan(
        stack: StackedLora | None, names: list[str], peft_names: list[str]
    ) -> tuple[str, AbstractContextManager[Any], RowAdapters]:
        adapters = set(names) - {BASE}
        if stack is None:  # no adapter loaded: the registry's model is the plain base
            return "base", nullcontext(), RowAdapters()
        if adapters <= stack.stackable:
            path = "base" if not adapters else "single" if len(set(names)) == 1 else "stacked"
            return path, stack.apply(names), RowAdapters(stack=stack)
        if len(set(names)) == 1:
            return "peft_active", _active_adapter(stack.model, names[0]), RowAdapters()
        if adapters & stack.unmixable:
            raise ValueError(f"adapters {sorted(adapters & stack.unmixable)} cannot share a batch: use groups()")
        return "peft_names", nullcontext(), RowAdapters(peft_names=peft_names)
