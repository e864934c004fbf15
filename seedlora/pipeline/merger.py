"""The per-module merge shared by every sink: inputs' updates of one module, combined by the method.

A LoRA module's update from each input is its factors (scale folded in), a dense DoRA update
(which needs the base weight), or zero where the input does not adapt the module. Low-rank
methods combine factors exactly (no out x in matrix); otherwise the updates are materialised and
the method's dense rule runs, drawing from a generator seeded by (seed, module name), so every
sink gets the same numbers whatever order it asks in. A LoRA bias is a second tensor of the
module, merged by the same method with its own generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Union

import torch

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


class Merger:
    """Merges what a plan describes, one module (or tensor) at a time, on request."""

    def __init__(self, plan: MergePlan, progress=False):
        self.plan = plan
        self.progress = progress

    # ---- LoRA modules
    def module(self, name: str) -> MergedModule:
        plan, target = self.plan, self.plan.modules[name]
        dense = target.dora or not plan.method.low_rank
        updates = [self._input_update(source, name, dense) for source in plan.sources]
        if dense:
            output = plan.method.merge_deltas(updates, plan.weights, plan.params, module_generator(plan.seed, name))
        else:
            output = plan.method.merge_factors(updates, plan.weights, plan.params)
        weight, stats = split_stats(output)
        return MergedModule(weight, self._bias(name) if target.bias else None, stats)

    def each_module(self, names, description: str) -> Iterator[tuple]:
        """(name, MergedModule) for each of `names`, with a progress bar when asked."""
        for name in progress_bar(list(names), self.progress, description, "module"):
            yield name, self.module(name)

    def _input_update(self, source, name: str, dense: bool):
        target = self.plan.modules[name]
        module = source.modules.get(name)
        if module is None:  # not adapted by this input: a zero update
            if dense:
                return torch.zeros(target.shape, dtype=torch.float32)
            return LowRank(B=torch.zeros(target.out_features, 0), A=torch.zeros(0, target.in_features))
        factors = source.factors(name)
        if module.dora:
            return dora_update(self.base_weight(name), factors.dense(), source.magnitude(name))
        return factors.dense() if dense else factors

    def _bias(self, name: str) -> torch.Tensor:
        target, plan = self.plan.modules[name], self.plan
        zero = torch.zeros(target.out_features, dtype=torch.float32)
        biases = [(s.bias(name) if name in s.modules else None) for s in plan.sources]
        biases = [zero if b is None else b for b in biases]
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
            values = [s.saved_tensor(module, param).to(torch.float32) if present else None
                      for s, present in zip(plan.sources, target.present)]
            if plan.method.name == "linear" and all(target.present):
                output = plan.method.merge_deltas(values, plan.weights, plan.params, generator)
                merged[param] = split_stats(output)[0]
                continue
            base = self._saved_base(module, param)
            deltas = [torch.zeros_like(base) if v is None else v - base for v in values]
            merged[param] = base + split_stats(plan.method.merge_deltas(deltas, plan.weights, plan.params, generator))[0]
        return merged

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
        deltas = [checkpoint.task_vector(name, weight) for checkpoint in plan.sources]
        output = plan.method.merge_deltas(deltas, plan.weights, plan.params, module_generator(plan.seed, name))
        return (weight, *split_stats(output))


def progress_bar(items, progress, description: str, unit: str):
    """`items` wrapped in a tqdm bar when `progress` is true (or by `progress` if callable)."""
    if callable(progress):
        return progress(items, description)
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=description, unit=unit, leave=False)
