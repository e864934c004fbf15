"""Plan a merge from headers only: which modules, which inputs adapt them, what the method needs.

`plan_merge` reads no tensor data. It resolves the method, its parameters and weights; takes the
union of the inputs' modules (a module an input does not adapt is a zero update for it); checks
that shapes and layouts agree; collects modules_to_save tensors and save_embedding_layers copies;
checks everything that needs the base model's weights can get them (DoRA updates, modules_to_save
merged as deltas); and records warnings (modules not adapted by every input, differing base
models, one input given twice), which `strict` turns into errors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from .. import peft_format as fmt
from ..errors import IncompatibleInputsError, UnsupportedFeatureError
from ..methods import MergeMethod, get_method
from ..sources import Checkpoint, ModelFolder
from ..sources.base import LoraModule, few

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModuleTarget:
    """One adapted module of the merge: its update's shape and layout, and who adapts it."""

    name: str
    out_features: int
    in_features: int
    embedding: bool
    transposed: bool  # the base weight stores the update transposed (in x out)
    ranks: tuple  # per input; 0 where the input does not adapt the module
    bias: bool  # some input has a LoRA bias here
    dora: bool  # some input is DoRA here: its update is dense

    @property
    def shape(self) -> tuple:
        return (self.out_features, self.in_features)

    @property
    def weight_name(self) -> str:
        return f"{self.name}.weight"

    @property
    def bias_name(self) -> str:
        return f"{self.name}.bias"


@dataclass(frozen=True)
class SavedTarget:
    """A modules_to_save module: its tensors' shapes and which inputs save it."""

    module: str
    shapes: tuple  # ((param, shape), ...)
    present: tuple  # per input: True if it saves the module


@dataclass
class MergePlan:
    """Everything a merge will do, decided before any tensor is read."""

    sources: list
    method: MergeMethod
    params: dict
    weights: torch.Tensor
    seed: int
    base: Optional[ModelFolder] = None
    modules: dict = field(default_factory=dict)  # name -> ModuleTarget
    saved: dict = field(default_factory=dict)  # module -> SavedTarget
    copies: dict = field(default_factory=dict)  # module -> shape of its carried base-layer copy
    tensors: list = field(default_factory=list)  # checkpoint merges: base tensors merged
    warnings: list = field(default_factory=list)
    strict: bool = False

    @property
    def checkpoints(self) -> bool:
        return bool(self.sources) and isinstance(self.sources[0], Checkpoint)

    def exact_rank(self, name: str) -> int:
        """Rank of the exact merged update of module `name` before any truncation."""
        target = self.modules[name]
        if self.method.low_rank and not target.dora:
            return sum(target.ranks) + self.method.extra_rank
        return min(target.shape)

    def warn(self, message: str) -> None:
        """Record a warning; with strict, refuse instead."""
        if self.strict:
            raise IncompatibleInputsError(f"{message} (refused: --strict)")
        self.warnings.append(message)
        log.warning(message)


def plan_merge(sources: Sequence, method="linear", weights=None, params=None, seed: int = 0,
               base: Optional[ModelFolder] = None, strict: bool = False) -> MergePlan:
    """Validate the inputs against each other (and the base) and decide the merge. No data read."""
    entry = get_method(method) if isinstance(method, str) else method
    plan = MergePlan(list(sources), entry, entry.resolve_params(params), entry.resolve_weights(weights, len(sources)),
                     int(seed), base=base, strict=strict)
    if plan.checkpoints:
        return _plan_checkpoints(plan)
    _check_inputs(plan)
    plan.modules = {name: _target(plan, name) for name in sorted(set().union(*(s.modules for s in sources)))}
    _report_partial_modules(plan)
    plan.saved = _saved_targets(plan)
    plan.copies = _copies(plan)
    _check_base_needs(plan)
    return plan


def _plan_checkpoints(plan: MergePlan) -> MergePlan:
    if plan.base is None:
        raise IncompatibleInputsError("full fine-tuned checkpoints merge through their task vectors; pass --base BASE_DIR")
    for checkpoint in plan.sources:
        checkpoint.validate_against(plan.base)
    plan.tensors = [name for name, info in plan.base.tensors.items() if info.is_float]
    return plan


def _check_inputs(plan: MergePlan) -> None:
    """The same input twice, and inputs trained on differently named base models: warnings."""
    seen = {}
    for source in plan.sources:
        key = str(Path(source.path).resolve()) if isinstance(source.path, Path) else f"model:{id(getattr(source, 'model', source))}:{source.path}"
        if key in seen:
            plan.warn(f"{source.label} is given twice; it counts twice in the merge (as if its weight were doubled)")
        seen[key] = source
    bases = {s.base_model for s in plan.sources if s.base_model}
    if len(bases) > 1:
        plan.warn(f"inputs name different base models ({few(sorted(bases))}); merge adapters of one base model")


def _target(plan: MergePlan, name: str) -> ModuleTarget:
    found = [s.modules.get(name) for s in plan.sources]
    first = next(m for m in found if m is not None)
    for source, module in zip(plan.sources, found):
        if module is not None and (module.shape != first.shape or module.embedding != first.embedding):
            raise IncompatibleInputsError(
                f"module {name}: {plan.sources[found.index(first)].label} updates a {first.out_features}x{first.in_features} "
                f"{'embedding' if first.embedding else 'weight'} but {source.label} a {module.out_features}x{module.in_features} "
                f"{'embedding' if module.embedding else 'weight'}; adapters must share one base model"
            )
    present = [m for m in found if m is not None]
    return ModuleTarget(
        name=name, out_features=first.out_features, in_features=first.in_features, embedding=first.embedding,
        transposed=_transposed(plan, name, first), ranks=tuple(m.rank if m else 0 for m in found),
        bias=any(m.bias for m in present), dora=any(m.dora for m in present),
    )


def _transposed(plan: MergePlan, name: str, module: LoraModule) -> bool:
    """Whether the base weight is (in x out): from the base's shapes when given, else the layout flags."""
    if plan.base is None:
        return module.transposed
    info = plan.base.weight(f"{name}.weight")
    if info is None:
        raise IncompatibleInputsError(
            f"module {name} has no weight {name}.weight in base {plan.base.path} (a renamed weight?); "
            "pass the base model the adapters were trained on"
        )
    out, inp = module.shape
    if module.embedding:
        if info.shape == (inp, out):
            return True
    elif info.shape == (out, inp) and not (out == inp and module.fan_in_fan_out):
        return False
    elif info.shape == (inp, out):
        return True
    raise IncompatibleInputsError(
        f"module {name} updates a {list(module.weight_shape)} weight but base {plan.base.path} has {name}.weight of "
        f"shape {list(info.shape)}; pass the base model the adapters were trained on"
    )


def _report_partial_modules(plan: MergePlan) -> None:
    partial = [t for t in plan.modules.values() if not all(t.ranks)]
    if not partial:
        return
    example = partial[0]
    lacking = next(s.label for s, r in zip(plan.sources, example.ranks) if not r)
    plan.warn(f"{len(partial)} module(s) are not adapted by every input (e.g. {example.name}, not in {lacking}); "
              "they count as zero updates for the inputs that lack them")


def _saved_targets(plan: MergePlan) -> dict:
    """modules_to_save modules of all inputs, with shapes that must agree."""
    targets = {}
    for module in sorted(set().union(*(s.saved for s in plan.sources))):
        present = tuple(module in s.saved for s in plan.sources)
        holders = [s for s, p in zip(plan.sources, present) if p]
        shapes = {param: holders[0].saved_shape(module, param) for param in holders[0].saved[module]}
        for source in holders[1:]:
            mine = {param: source.saved_shape(module, param) for param in source.saved[module]}
            if mine != shapes:
                raise IncompatibleInputsError(
                    f"modules_to_save {module}: {holders[0].label} saves {shapes} but {source.label} saves {mine}; "
                    "the inputs must save the same module of one base model"
                )
        targets[module] = SavedTarget(module, tuple(sorted(shapes.items())), present)
    return targets


def _copies(plan: MergePlan) -> dict:
    """save_embedding_layers copies: one shape per module (the values are compared when read)."""
    copies = {}
    for source in plan.sources:
        for module in getattr(source, "base_copies", {}):
            shape = source.base_copy_shape(module)
            if copies.setdefault(module, shape) != shape:
                raise IncompatibleInputsError(
                    f"{source.label}: saved base layer of {module} has shape {list(shape)}, another input's has "
                    f"{list(copies[module])}; the inputs were trained with different vocabularies"
                )
    return copies


def _check_base_needs(plan: MergePlan) -> None:
    """DoRA updates and modules_to_save deltas need base weights: from --base or a PeftModel."""
    in_model = any(hasattr(s, "base_weight") for s in plan.sources)
    dora = [t.name for t in plan.modules.values() if t.dora]
    if dora and plan.base is None and not in_model:
        raise UnsupportedFeatureError(
            f"DoRA inputs (e.g. module {dora[0]}): a DoRA update depends on the base weights; "
            "pass --base BASE_DIR (with --fuse for an exact result, or --rank N for a plain LoRA adapter)"
        )
    for target in plan.saved.values():
        soup = plan.method.name == "linear" and all(target.present)
        if soup or in_model:
            continue
        if plan.base is None:
            why = f"method {plan.method.name} merges them as deltas from the base" if plan.method.name != "linear" else "an input that does not save it keeps the base's value"
            raise IncompatibleInputsError(f"modules_to_save {target.module}: {why}; pass --base BASE_DIR")
        for param, shape in target.shapes:
            info = plan.base.weight(f"{target.module}.{param}")
            if info is None or tuple(info.shape) != tuple(shape):
                raise IncompatibleInputsError(
                    f"modules_to_save {target.module}.{param}: base {plan.base.path} has no tensor of shape {list(shape)} "
                    f"to take deltas from; merge with -m linear (a soup of the saved modules) or pass the right base"
                )
    if plan.base is not None:
        for source in plan.sources:
            check_targets_against_base(source, plan.base)


def check_targets_against_base(source, base: ModelFolder) -> None:
    """Every base module the source's config targets (list target_modules) must have factors."""
    targets = source.config.get("target_modules")
    if not isinstance(targets, (list, tuple)):
        return
    for name, info in base.tensors.items():
        module = name[: -len(".weight")] if name.endswith(".weight") else None
        if module is None or len(info.shape) != 2 or module in source.modules or module in source.saved:
            continue
        if fmt.targets(source.config, module):
            raise IncompatibleInputsError(
                f"{source.label}: its config targets {module} (in base {base.path}) but its weights hold no factors for it; "
                "the weights file is incomplete, re-save the adapter"
            )
