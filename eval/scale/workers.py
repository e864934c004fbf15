"""The measured processes that are not `seedlora merge`: floors and PEFT, one process each.

    python -m eval.scale.workers NAME SPEC_JSON OUT

read_write   read the K adapter files whole, write an adapter file of `rank` columns for the same
             modules (the I/O floor of an adapter merge);
materialise  read the K adapters, materialise the K dense float32 updates s·B·A of every module
             and sum them (the floor of any dense method, issue 11's "materialise-and-sum");
copy         copy the base model folder (the disk floor of a fused merge);
peft         PEFT add_weighted_adapter(combination_type="ties_svd") on a PeftModel holding the
             K adapters, then save_pretrained; the model load is timed apart and not counted.
Each prints one JSON line: {"seconds": ..., "load_seconds": ...}.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path


def read_write(spec: dict, out: Path) -> dict:
    import torch
    from safetensors.torch import load_file, save_file

    started = time.perf_counter()
    states = [load_file(str(Path(a) / "adapter_model.safetensors")) for a in spec["adapters"]]
    rank, state = spec["rank"], {}
    for key, tensor in states[0].items():
        shape = (rank, tensor.shape[1]) if ".lora_A." in key else (tensor.shape[0], rank)
        state[key] = torch.zeros(shape, dtype=torch.float32)
    out.mkdir(parents=True)
    save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return {"seconds": time.perf_counter() - started}


def materialise(spec: dict, out: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    started = time.perf_counter()
    states = [load_file(str(Path(a) / "adapter_model.safetensors")) for a in spec["adapters"]]
    scale, checksum = spec["scale"], 0.0
    for key in states[0]:
        if ".lora_A." not in key:
            continue
        total = None
        for state in states:
            delta = (state[key.replace(".lora_A.", ".lora_B.")] * scale) @ state[key]
            total = delta if total is None else total.add_(delta)
        checksum += float(total[0, 0])  # keep the work observable
    return {"seconds": time.perf_counter() - started, "checksum": checksum}


def copy(spec: dict, out: Path) -> dict:
    started = time.perf_counter()
    shutil.copytree(spec["base"], out)
    return {"seconds": time.perf_counter() - started}


def peft(spec: dict, out: Path) -> dict:
    from eval.bench_merge import load_peft_model

    started = time.perf_counter()
    model = load_peft_model(spec, spec["adapters"], spec["layers"])
    loaded = time.perf_counter()
    k = len(spec["adapters"])
    model.add_weighted_adapter([f"a{i}" for i in range(k)], [1.0] * k, "merged", combination_type="ties_svd",
                               svd_rank=spec["rank"], density=spec["density"], majority_sign_method="total",
                               svd_full_matrices=False)
    model.save_pretrained(str(out), selected_adapters=["merged"])
    return {"seconds": time.perf_counter() - loaded, "load_seconds": loaded - started,
            "adapter_dir": str(out / "merged")}


WORKERS = {"read_write": read_write, "materialise": materialise, "copy": copy, "peft": peft}

if __name__ == "__main__":
    name, spec, out = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
    if spec.get("threads"):
        import torch

        torch.set_num_threads(spec["threads"])
    print(json.dumps(WORKERS[name](spec, out)))
