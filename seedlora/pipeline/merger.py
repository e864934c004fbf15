"""The per-module merge shared by every sink: inputs' updates of one module, combined by the method.

A LoRA module's update from each input is its factors (scale folded in), a dense DoRA update
(which needs the base weight), or zero where the input does not adapt the module. Low-rank
methods combine factors exactly (no out x in matrix); otherwise the updates are materialised and
the method's dense rule runs, drawing from a generator seeded by (seed, module name), so every
sink gets the same numbers whatever order it asks in. A LoRA bias is a second tensor of the
module, merged by the same method with its own generator.

Device: every tensor of a module is moved to the merge's device as it is read (factors by the
sources themselves), merged and truncated there; random draws still come from the CPU generator.
Dense updates are materialised into a pool of K flat float32 buffers reused from module to
module (sized by the largest module), so a 7B merge does not page-fault fresh memory for each;
methods with a row-block form (ties, magnitude_prune: methods/rowwise.py) never materialise
the K updates of LoRA inputs on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Union

import torch

from ..device import resolve_device
from ..errors import IncompatibleInputsError
from ..lowrank import LowRank
from ..methods.base import split_stats
from ..rng import module_generator
from ..sources.base import dora_update
from .plan import MergePlan


@dataclass
class MergedModule:
    """One module's merged update: weight (out x in, LowRank or dense), bias, method statistics."""

    weight: Union[LowRank, torch.Tensor]
    bias: Optional[torch.Tensor] = None
    stats: dict = field(default_factory=dict)

    def cpu(self) -> "MergedModule":
        """The same module with its tensors on the CPU (for writers)."""
        weight = self.weight
        weight = LowRank(B=weight.B.cpu(), A=weight.A.cpu()) if isinstance(weight, LowRank) else weight.cpu()
        return MergedModule(weight, None if self.bias is None else self.bias.cpu(), self.stats)


class DeltaPool:
    """K flat float32 buffers reused for the materialised updates of one module after another."""

    def __init__(self, device: torch.device):
        self.device = device
        self.buffers: list = []

    def dense(self, slot: int, factors: LowRank) -> torch.Tensor:
        """factors.B @ factors.A written into buffer `slot` (valid until the slot is reused)."""
        shape = factors.shape
        size = shape[0] * shape[1]
        while len(self.buffers) <= slot:
            self.buffers.append(torch.empty(0, dtype=torch.float32, device=self.device))
        if self.buffers[slot].numel() < size:
            self.buffers[slot] = torch.empty(size, dtype=torch.float32, device=self.device)
        return torch.mm(factors.B, factors.A, out=self.buffers[slot][:size].view(shape))

    def owns(self, tensor: torch.Tensor) -> bool:
        """True when `tensor` lives in one of the pool's buffers (a method returned an input as is)."""
        return any(tensor.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() for b in self.buffers)


class Merger:
    """Merges what a plan describes, one module (or tensor) at a time, on request, on `device`."""

    def __init__(self, plan: MergePlan, progress=False, device="cpu"):
        self.plan = plan
        self.progress = progress
        self.device = resolve_device(device)
        self.pool = DeltaPool(self.device)

    # ---- LoRA modules
    def module(self, name: str, rowwise: bool = False) -> MergedModule:
        """Module `name` merged. With `rowwise`, a dense result may come as a methods.rowwise.RowwiseMerge
        (rows formed on demand, for a sink that streams them); otherwise it is a tensor."""
        plan, target = self.plan, self.plan.modules[name]
        dense = target.dora or not plan.method.low_rank
        if dense and self._rowwise(target):
            factors = [self._input_update(slot, source, name, False) for slot, source in enumerate(plan.sources)]
            merged = plan.method.merge_rowwise(factors, plan.weights, plan.params)
            bias = self._bias(name) if target.bias else None
            return MergedModule(merged if rowwise else merged.dense(), bias)
        updates = [self._input_update(slot, source, name, dense) for slot, source in enumerate(plan.sources)]
        if dense:
            output = plan.method.merge_deltas(updates, plan.weights, plan.params, module_generator(plan.seed, name))
        else:
            output = plan.method.merge_factors(updates, plan.weights, plan.params)
        weight, stats = split_stats(output)
        if isinstance(weight, torch.Tensor) and self.pool.owns(weight):
            weight = weight.clone()  # the pool's buffers are reused by the next module
        return MergedModule(weight, self._bias(name) if target.bias else None, stats)

    def _rowwise(self, target) -> bool:
        """True when the method has a row-block form and every input is plain LoRA factors on the CPU."""
        return self.plan.method.merge_rowwise is not None and not target.dora and self.device.type == "cpu"

    def each_module(self, names, description: str) -> Iterator[tuple]:
        """(name, MergedModule) for each of `names`, with a progress bar when asked."""
        for name in progress_bar(list(names), self.progress, description, "module"):
            yield name, self.module(name)

    def _input_update(self, slot: int, source, name: str, dense: bool):
        target, device = self.plan.modules[name], self.device
        module = source.modules.get(name)
        if module is None:  # not adapted by this input: a zero update
            if dense:
                return torch.zeros(target.shape, dtype=torch.float32, device=device)
            return LowRank(B=torch.zeros(target.out_features, 0, device=device),
                           A=torch.zeros(0, target.in_features, device=device))
        factors = source.factors(name, device=device)
        if module.dora:
            magnitude = source.magnitude(name).to(device)
            return dora_update(self.base_weight(name).to(device), factors.dense(), magnitude)
        return self.pool.dense(slot, factors) if dense else factors

    def _bias(self, name: str) -> torch.Tensor:
        target, plan = self.plan.modules[name], self.plan
        zero = torch.zeros(target.out_features, dtype=torch.float32)
        biases = [(s.bias(name) if name in s.modules else None) for s in plan.sources]
        biases = [(zero if b is None else b).to(self.device) for b in biases]
        output = plan.method.merge_deltas(biases, plan.weights, plan.params, module_generator(plan.seed, name + ".bias"))
        return split_stats(output)[0]

    def base_weight(self, name: str) -> torch.Tensor:
        """The base weight of module `name` in the update's orientation (out x in), float32."""
        target, plan = self.plan.modules[name], self.plan
        if plan.base is not None:
            weight = plan.base.load(plan.base.weight(target.weight_name))
        else:
            weight = next(s for s in plan.sources if hasattr(s, "base_weight")).base_weight(name)
        weight = weight.to(torch.float32)
        return weight.T if target.transposed else weight

    # ---- modules_to_save
    def saved(self, module: str) -> dict:
        """The merged full tensors of a modules_to_save module (float32), by parameter name.

        linear: the soup Σ w_i M_i. Other methods: M_base + merge(M_i − M_base). An input that
        does not save the module contributes the base's value (a zero delta).
        """
        plan, target = self.plan, self.plan.saved[module]
        merged = {}
        for param, _ in target.shapes:
            generator = module_generator(plan.seed, f"{module}.{param}")
            values = [s.saved_tensor(module, param).to(self.device, torch.float32) if present else None
                      for s, present in zip(plan.sources, target.present)]
            if plan.method.name == "linear" and all(target.present):
                output = plan.method.merge_deltas(values, plan.weights, plan.params, generator)
                merged[param] = split_stats(output)[0]
                continue
            base = self._saved_base(module, param).to(self.device)
            deltas = [torch.zeros_like(base) if v is None else v - base for v in values]
            merged[param] = base + split_stats(plan.method.merge_deltas(deltas, plan.weights, plan.params, generator))[0]
        return {param: tensor.cpu() for param, tensor in merged.items()}

    def _saved_base(self, module: str, param: str) -> torch.Tensor:
        if self.plan.base is not None:
            return self.plan.base.load(self.plan.base.weight(f"{module}.{param}")).to(torch.float32)
        source = next(s for s in self.plan.sources if hasattr(s, "saved_base") and module in s.saved)
        return source.saved_base(module, param).to(torch.float32)

    # ---- save_embedding_layers copies
    def copy(self, module: str) -> torch.Tensor:
        """The base-layer copy the inputs saved for `module`; they must all agree."""
        holders = [s for s in self.plan.sources if module in getattr(s, "base_copies", {})]
        first = holders[0].base_copy(module)
        for source in holders[1:]:
            if not torch.equal(source.base_copy(module).to(first.dtype), first):
                raise IncompatibleInputsError(
                    f"{source.label}: its saved base layer of {module} differs from {holders[0].label}'s; the inputs "
                    "were trained on different base embeddings (resized or changed vocabulary) and cannot be merged"
                )
        return first

    # ---- full checkpoints
    def tensor(self, name: str) -> tuple:
        """(base tensor, merged task vector, the method's stats) for a checkpoint merge of tensor `name`."""
        plan = self.plan
        weight = plan.base.load(plan.base.tensors[name])
        deltas = [checkpoint.task_vector(name, weight).to(self.device) for checkpoint in plan.sources]
        output = plan.method.merge_deltas(deltas, plan.weights, plan.params, module_generator(plan.seed, name))
        merged, stats = split_stats(output)
        return weight, merged.cpu(), stats


def progress_bar(items, progress, description: str, unit: str):
    """`items` wrapped in a tqdm bar when `progress` is true (or by `progress` if callable)."""
    if callable(progress):
        return progress(items, description)
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=description, unit=unit, leave=False)
