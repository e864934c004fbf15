"""Will vLLM and PEFT load this LoRA adapter, and compute the same update? (headers only)

Some adapters are refused (DoRA, bias, modules_to_save, rank above --max-lora-rank); worse,
others load but compute a different update: PEFT silently drops keys it cannot place, vLLM
scales each module by the lora_alpha/r its config declares whatever the tensors' real rank,
and both skip modules the base does not have. `check_adapter` reads adapter_config.json and the weights
file's header (no tensor data) and reports each problem with its fix, plus the
`--max-lora-rank` to serve with. The rules follow vLLM 0.32 (vllm/lora/peft_helper.py,
lora_model.py, utils.py, config/lora.py) and PEFT 0.21, both checked by experiment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import peft_format as fmt
from .errors import SeedLoraError
from .peft_format import BIN_NAME, CONFIG_NAME, KEY_PREFIX, pattern_value
from .peft_format import WEIGHTS_NAME as SAFETENSORS_NAME
from .pipeline.rank import VLLM_MAX_LORA_RANKS, vllm_rank_bucket
from .safetensors_io import read_header
from .sources.adapter_folder import read_config
ERROR, MIS_SCALE, WARNING = "error", "mis-scale", "warning"
REMERGE = "re-merge with `seedlora merge ... --vllm`"
# string init_lora_weights that still load as plain LoRA in vLLM (peft_helper.py:89-100)
_PLAIN_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
# PEFT features vLLM refuses outright (peft_helper.py:53-87): config key -> what it is
_REFUSED = {
    "use_dora": "DoRA (use_dora)", "lora_bias": "LoRA bias (lora_bias)", "layer_replication": "layer_replication",
    "alora_invocation_tokens": "Activated LoRA (alora_invocation_tokens)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)", "use_qalora": "QALoRA (use_qalora)",
}
@dataclass(frozen=True)
class Finding:
    """One reason an adapter is refused ("error"), loads with a different update ("mis-scale"),
    or may surprise ("warning"); `message` names the file or module and the fix."""

    severity: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


@dataclass(frozen=True)
class CheckReport:
    """All findings for one adapter, and the --max-lora-rank to serve it with (None if none fits)."""

    adapter: Path
    findings: tuple
    max_lora_rank: Optional[int]

    @property
    def problems(self) -> tuple:
        """Findings that make vLLM or PEFT refuse the adapter or compute a different update."""
        return tuple(f for f in self.findings if f.severity in (ERROR, MIS_SCALE))


def check_adapter(path, base=None) -> CheckReport:
    """Every reason vLLM or PEFT would refuse or mis-scale the adapter at `path`.

    Args:
        path: a PEFT adapter folder.
        base: optional Hugging Face model folder; module names and shapes are checked against it.
    Returns:
        CheckReport with findings in file order and the --max-lora-rank to serve with.
    """
    path = Path(path)
    if not path.is_dir():
        return CheckReport(path, (Finding(ERROR, f"{path}: adapter folder not found; pass a PEFT adapter folder"),), None)
    config, findings = _read_config(path)
    weights_file, shapes, file_findings = _weight_shapes(path)
    if config is not None:
        findings += _config_findings(config, path / CONFIG_NAME, shapes or {})
    modules, more = _modules(weights_file, shapes or {}, (config or {}).get("modules_to_save") or ())
    findings += file_findings + more
    if config is not None:
        findings += _rank_findings(config, modules, weights_file) + _target_findings(config, modules, path / CONFIG_NAME)
    if base is not None and modules:
        findings += _base_findings(modules, config or {}, Path(base), weights_file)
    declared = [config.get("r")] + list((config.get("rank_pattern") or {}).values()) if config else []
    # vLLM refuses the adapter if r or any rank_pattern value exceeds --max-lora-rank
    declared = [v for v in declared if isinstance(v, int) and v > 0]
    rank = max([m["rank"] for m in modules.values()] + declared, default=None)
    if rank is not None and rank > VLLM_MAX_LORA_RANKS[-1]:
        findings.append(Finding(ERROR, f"{path}: rank {rank} is above vLLM's largest --max-lora-rank 512; re-merge with `seedlora merge ... --vllm --rank 512`"))
        rank = None
    return CheckReport(path, tuple(findings), vllm_rank_bucket(rank) if rank else None)


def _read_config(path: Path) -> tuple:
    """(config dict or None, findings), with adapter.py's checks and messages."""
    try:
        return read_config(path), []
    except SeedLoraError as exc:
        return None, [Finding(ERROR, str(exc))]


def _weight_shapes(path: Path) -> tuple:
    """(weights file, {tensor name: shape} or None, findings), from the header only."""
    st_file, findings = path / SAFETENSORS_NAME, []
    pickles = [path / name for name in (BIN_NAME, "adapter_model.pt") if (path / name).is_file()]
    chosen = st_file if st_file.is_file() else (pickles[0] if pickles else None)
    for other in sorted(path.glob("*.safetensors")) + pickles:
        if other != chosen:
            findings.append(Finding(WARNING, f"{other}: ignored (PEFT and vLLM read only {chosen.name if chosen else SAFETENSORS_NAME}); delete it to avoid confusion"))
    if chosen is None:
        return None, None, findings + [Finding(ERROR, f"{path}: no {SAFETENSORS_NAME}; the adapter weights are missing")]
    if chosen == st_file:
        try:
            infos, _ = read_header(st_file)
        except SeedLoraError as exc:
            return st_file, None, findings + [Finding(ERROR, str(exc))]
        return st_file, {k: tuple(v.shape) for k, v in infos.items()}, findings
    findings.append(Finding(WARNING, f"{chosen}: pickle weights load in PEFT and vLLM, but {SAFETENSORS_NAME} is safer and what seedlora writes; convert with safetensors.torch.save_file"))
    try:
        import torch

        state = torch.load(chosen, map_location="cpu", weights_only=True, mmap=True)
        return chosen, {k: tuple(v.shape) for k, v in state.items()}, findings
    except Exception as exc:  # torch raises many types for a bad pickle
        return chosen, None, findings + [Finding(ERROR, f"{chosen}: cannot be loaded safely ({exc}); re-save as safetensors")]


def _modules(weights_file: Optional[Path], shapes: dict, saved_names) -> tuple:
    """({module: {"rank", "A", "B", "embedding"}}, findings) from tensor names (peft_format's grammar) and shapes."""
    pairs, others, bare, findings = {}, [], [], []
    for key, shape in shapes.items():
        role = fmt.parse_key(key, saved_names)
        if role is None or role.role not in ("A", "B") or role.adapter:
            others.append((key, role))
            continue
        if not key.startswith(KEY_PREFIX):
            bare.append(key)
        pairs.setdefault(role.module, {"embedding": role.embedding})[role.role] = shape
    findings += _odd_key_findings(weights_file, others)
    if bare:
        findings.append(Finding(MIS_SCALE, f"{weights_file}: {len(bare)} tensors lack the {KEY_PREFIX} prefix (e.g. {bare[0]}); PEFT loads none of them (zero update) while vLLM applies them; rename them to {KEY_PREFIX}<module>..."))
    modules = {}
    for name, entry in sorted(pairs.items()):
        a, b = entry.get("A"), entry.get("B")
        if a is None or b is None:
            findings.append(Finding(ERROR, f"{weights_file}: module {name} has only lora_{'A' if b is None else 'B'}; the file is incomplete, re-save the adapter"))
        elif len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            findings.append(Finding(ERROR, f"{weights_file}: module {name} lora_A {list(a)} and lora_B {list(b)} do not form B @ A; re-save the adapter"))
        else:
            modules[name] = {"rank": a[0], "A": a, "B": b, "embedding": entry["embedding"]}
    if shapes and not modules and not findings:
        findings.append(Finding(ERROR, f"{weights_file}: holds no lora_A/lora_B tensors"))
    return modules, findings


# what vLLM does with each kind of tensor that is not a plain LoRA factor: (severity, what, fix)
_ODD_KINDS = {
    "base_copy": (WARNING, "full embedding weights (PEFT save_embedding_layers)", "vLLM ignores them, so a resized or trained vocabulary is served as the base's: save with save_embedding_layers=False if unchanged"),
    "magnitude": (ERROR, "DoRA magnitudes", "vLLM refuses them: retrain without DoRA, or serve the model fused (`seedlora merge ... --fuse --base BASE`)"),
    "bias": (ERROR, "LoRA biases", "vLLM refuses them: retrain with lora_bias=False, or serve the model fused"),
    "named": (ERROR, "factors with an adapter name or odd suffix", "vLLM refuses them: rename to <module>.lora_A.weight / .lora_B.weight"),
    "saved": (ERROR, "modules_to_save weights", "vLLM refuses them (it accepts only classifier/score heads): serve the model fused, or retrain without them"),
    None: (ERROR, "full weights (trainable tokens or unknown tensors)", "vLLM refuses them: retrain without them"),
}


def _odd_key_findings(weights_file: Optional[Path], keys: list) -> list:
    """One finding per kind of tensor that is not a LoRA factor (vLLM raises on most)."""
    kinds: dict = {}
    for key, role in keys:
        kind = None if role is None else "named" if role.role in ("A", "B") else role.role
        if kind == "saved" and role.module.rsplit(".", 1)[-1] in ("classifier", "score"):
            continue  # vLLM serves classification heads
        kinds.setdefault(_ODD_KINDS[kind], []).append(key)
    return [
        Finding(severity, f"{weights_file}: {len(found)} tensors are {what} (e.g. {found[0]}); {fix}")
        for (severity, what, fix), found in kinds.items()
    ]


def _config_findings(config: dict, where: Path, shapes: dict) -> list:
    """Config fields vLLM requires, refuses, or applies differently from older releases."""
    found = []
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        found.append(Finding(ERROR, f"{where}: peft_type {peft_type} is not LORA; vLLM serves LoRA adapters only"))
    missing = [k for k in ("r", "lora_alpha", "target_modules") if k not in config]
    if missing:
        found.append(Finding(ERROR, f"{where}: lacks {', '.join(missing)}, which vLLM requires; add them (PEFT's defaults: r=8, lora_alpha=8)"))
    if "r" in config and not (isinstance(config["r"], int) and config["r"] > 0):
        found.append(Finding(ERROR, f"{where}: r={config['r']!r} is not a positive integer; fix r"))
    for key, what in _REFUSED.items():
        if config.get(key):
            found.append(Finding(ERROR, f"{where}: {what} is set; vLLM refuses it: retrain without it, or fuse into the base with PEFT merge_and_unload"))
    if config.get("bias", "none") != "none":
        stored = any(k.endswith(".bias") for k in shapes)
        fix = "retrain with bias='none'" if stored else "no bias tensors are stored, so set \"bias\": \"none\""
        found.append(Finding(ERROR, f"{where}: bias={config['bias']!r}; vLLM refuses adapter bias: {fix}"))
    saved = config.get("modules_to_save") or []
    if saved:
        severity = WARNING if set(saved) <= {"classifier", "score"} else ERROR
        found.append(Finding(severity, f"{where}: modules_to_save={saved}; vLLM accepts only classifier/score heads of classification models: retrain without them"))
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in _PLAIN_INITS:
        found.append(Finding(ERROR, f"{where}: init_lora_weights={init!r} changes base weights when PEFT loads it; vLLM refuses it: convert with PEFT's path_initial_model_for_weight_conversion"))
    return found + _scaling_findings(config, where)


def _scaling_findings(config: dict, where: Path) -> list:
    """rank_pattern, alpha_pattern and rsLoRA: honoured by PEFT and vLLM 0.32, not everywhere."""
    found = []
    bad = {k: v for k, v in (config.get("rank_pattern") or {}).items() if not (isinstance(v, int) and v > 0)}
    if bad:
        found.append(Finding(ERROR, f"{where}: rank_pattern values must be positive integers, got {bad}; vLLM refuses it"))
    patterns = [k for k in ("rank_pattern", "alpha_pattern") if config.get(k)]
    if patterns:
        found.append(Finding(WARNING, f"{where}: per-module {' and '.join(patterns)}; PEFT and vLLM >= 0.32 honour them, but older vLLM (e.g. 0.8) applies r/lora_alpha to every module and mis-scales: for a portable adapter {REMERGE}"))
    if config.get("use_rslora"):
        found.append(Finding(WARNING, f"{where}: use_rslora (scale lora_alpha/sqrt(r)); PEFT and vLLM honour it, tools reading only r and lora_alpha mis-scale by sqrt(r): for a portable adapter {REMERGE}"))
    return found


def _rank_findings(config: dict, modules: dict, weights_file: Optional[Path]) -> list:
    """Tensors whose rank differs from what r/rank_pattern declare for their module."""
    r = config.get("r")
    wrong = []
    for name, module in modules.items():
        declared = pattern_value(config.get("rank_pattern"), name, r)
        if isinstance(declared, int) and declared != module["rank"]:
            wrong.append((name, module["rank"], declared))
    if not wrong:
        return []
    name, rank, declared = wrong[0]
    return [Finding(ERROR, f"{weights_file}: {len(wrong)} modules have a rank adapter_config.json does not declare (e.g. {name}: rank {rank}, config {declared}); PEFT fails (size mismatch), vLLM scales it by lora_alpha/{declared}: fix r/rank_pattern or {REMERGE}")]


def _target_findings(config: dict, modules: dict, where: Path) -> list:
    """Modules with factors that PEFT would not wrap (it drops them; vLLM applies them)."""
    untargeted = [m for m in modules if not fmt.targets(config, m)]
    if not untargeted:
        return []
    return [Finding(MIS_SCALE, f"{where}: {len(untargeted)} modules with factors are not in target_modules/are excluded (e.g. {untargeted[0]}); PEFT drops them while vLLM applies them (or refuses an unknown module name): add them to target_modules")]


def _base_findings(modules: dict, config: dict, base: Path, weights_file: Optional[Path]) -> list:
    """Each module needs a base weight `<module>.weight` whose shape fits B @ A."""
    from .sources.model_folder import ModelFolder

    try:
        folder = ModelFolder.open(base)
    except SeedLoraError as exc:
        return [Finding(ERROR, f"--base: {exc}")]
    missing, wrong = [], []
    for name, module in modules.items():
        tensor = folder.weight(f"{name}.weight")  # a tied output head resolves to the embedding
        if tensor is None:
            missing.append(name)
            continue
        update = (module["B"][0], module["A"][1])  # out x in of the update
        fits = {update[::-1]} if module["embedding"] else {update, update[::-1]} if config.get("fan_in_fan_out") else {update}
        if tuple(tensor.shape) not in fits:
            wrong.append(f"{name}: update {list(update)} vs base {list(tensor.shape)}")
    found = []
    if missing:
        found.append(Finding(MIS_SCALE, f"{weights_file}: {len(missing)} modules have no weight in {base} (e.g. no {missing[0]}.weight); PEFT skips them silently, vLLM too (or refuses an unknown module name): the adapter was made for another model or its key names are wrong"))
    if wrong:
        found.append(Finding(ERROR, f"{weights_file}: {len(wrong)} modules do not fit {base} ({wrong[0]}); PEFT fails (size mismatch): the adapter was made for another model"))
    return found
