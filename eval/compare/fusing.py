"""Full-model copies for mergekit: one fused model per adapter, and a base in another dtype.

mergekit merges full models only, so each adapter is fused first: W_i = dtype(W + s_i B_i A_i),
computed in float32 and rounded once (what a careful fuser does). This is written with
safetensors alone, not with seedlora, and its time is not counted for mergekit. Results are
cached under the work folder, keyed by the inputs' paths and the dtype.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from eval.compare.common import CompareError
from eval.compare.reference import A_SUFFIX, B_SUFFIX, PREFIX, adapter_scale

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DONE = "done.json"


def _adapter_updates(adapter: Path | None) -> dict:
    """weight name -> function giving τ in float32 (lazily: one module in memory at a time)."""
    if adapter is None:
        return {}
    scale, path = adapter_scale(adapter), str(Path(adapter) / "adapter_model.safetensors")
    with safe_open(path, framework="pt") as handle:
        names = [k[len(PREFIX):-len(A_SUFFIX)] for k in handle.keys() if k.endswith(A_SUFFIX)]

    def update(name: str):
        with safe_open(path, framework="pt") as handle:
            A = handle.get_tensor(f"{PREFIX}{name}{A_SUFFIX}").float()
            B = handle.get_tensor(f"{PREFIX}{name}{B_SUFFIX}").float()
        return (B * scale) @ A

    return {f"{name}.weight": (lambda n=name: update(n)) for name in names}


def write_model(base: Path, out: Path, adapter: Path | None = None, dtype: str | None = None) -> Path:
    """Copy the model folder `base` to `out`, adding the adapter's updates and casting to dtype."""
    updates, cast = _adapter_updates(adapter), DTYPES[dtype] if dtype else None
    staging = out.with_name(out.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for item in Path(base).iterdir():
        if item.is_file() and item.suffix != ".safetensors" and item.name != DONE:
            shutil.copy2(item, staging / item.name)
    if dtype:
        config = json.loads((staging / "config.json").read_text())
        config["dtype"] = dtype
        (staging / "config.json").write_text(json.dumps(config, indent=2))
    for shard in sorted(Path(base).glob("*.safetensors")):
        state = {}
        with safe_open(str(shard), framework="pt") as handle:
            for key in handle.keys():
                weight = handle.get_tensor(key)
                target = cast or weight.dtype
                state[key] = (weight.float() + updates.pop(key)()).to(target) if key in updates else weight.to(target)
        save_file(state, str(staging / shard.name), metadata={"format": "pt"})
    if updates:
        raise CompareError(f"{adapter}: modules not in {base}: {sorted(updates)[:3]}")
    (staging / DONE).write_text(json.dumps({"base": str(base), "adapter": str(adapter), "dtype": dtype}))
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out


def _key(*parts) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:10]


def cached_model(work: Path, base: Path, adapter: Path | None = None, dtype: str | None = None) -> Path:
    """write_model, once: the folder is reused while its done.json exists."""
    label = Path(adapter).name if adapter else "base"
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(base).iterdir()) if p.is_file()]
    key = _key(Path(base).resolve(), adapter and Path(adapter).resolve(), dtype, stamp)  # a rebuilt base: new key
    out = Path(work) / "models" / f"{label}-{dtype or 'native'}-{key}"
    if not (out / DONE).is_file():
        write_model(base, out, adapter, dtype)
    return out


def fused_inputs(work: Path, base: Path, adapters: list, dtype: str | None = None) -> tuple:
    """(base in dtype, [that base + τ_i, same dtype, each adapter]): mergekit's K full-model inputs."""
    base_copy = cached_model(work, base, None, dtype) if dtype else Path(base)
    return base_copy, [cached_model(work, base_copy, adapter) for adapter in adapters]


def read_weights(folder: Path, names=None) -> dict:
    """Tensors of a model folder (all, or those named), as stored."""
    tensors = {}
    for shard in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            for key in handle.keys():
                if names is None or key in names:
                    tensors[key] = handle.get_tensor(key)
    return tensors
