"""The factor path never allocates an out x in matrix: measured by peak memory, not assumed."""

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, torch
    from safetensors.torch import save_file
    from seedlora import merge_adapters
    root, method, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for i in range(3):
        torch.manual_seed(i)
        name = "base_model.model.model.layers.0.mlp.up_proj"
        state = {f"{name}.lora_A.weight": torch.randn(8, size), f"{name}.lora_B.weight": torch.randn(size, 8)}
        folder = f"{root}/a{i}"
        import os; os.makedirs(folder)
        save_file(state, f"{folder}/adapter_model.safetensors")
        json.dump({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["up_proj"]}, open(f"{folder}/adapter_config.json", "w"))
    import peft, tqdm.auto, seedlora.sinks.adapter_folder  # imports count as baseline, not as merge memory
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    merge_adapters([f"{root}/a{i}" for i in range(3)], f"{root}/out", method=method)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_increase_mb": (after - before) / 1024}))
    """
)


def peak_increase_mb(tmp_path, method: str, size: int) -> float:
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), method, str(size)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_increase_mb"]


@pytest.mark.parametrize("method", ["linear", "seedlora"])
def test_factor_methods_stay_far_below_one_dense_matrix(tmp_path, method):
    size = 6144  # one out x in float32 matrix would be 144 MiB
    dense_mb = size * size * 4 / 2**20
    increase = peak_increase_mb(tmp_path, method, size)
    assert increase < dense_mb / 4, f"{method}: peak grew {increase:.0f} MiB, a dense matrix is {dense_mb:.0f} MiB"
