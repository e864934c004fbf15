"""The recipes in examples/ run as documented, on real PEFT adapters of a tiny model."""

import runpy
import sys

import pytest

from _adapters import make_adapters, save_tiny_llama


def test_merge_seed_adapters_recipe_runs_with_and_without_a_base(tmp_path, monkeypatch, capsys):
    folders = [str(p) for p in make_adapters(tmp_path / "in", ranks=(4, 4, 4))]
    base = save_tiny_llama(tmp_path / "base")
    monkeypatch.setattr(sys, "argv", ["merge_seed_adapters.py", *folders, "-o", str(tmp_path / "out"), "--base", str(base)])
    runpy.run_path("examples/merge_seed_adapters.py", run_name="__main__")
    out = capsys.readouterr().out
    assert "seedlora     rank  13" in out and "linear       rank  12  energy kept 1.0000" in out
    assert "linear-r8    rank   8" in out and "in-model seedlora merge: adapter 'merged' of rank 13" in out
    assert (tmp_path / "out" / "seedlora" / "adapter_model.safetensors").exists()


@pytest.mark.vllm
def test_serve_vllm_demo_serves_the_merged_adapter_and_the_fused_model_alike(tmp_path):
    """examples/serve_vllm.py --demo: merged adapter and fused model give the same greedy tokens."""
    import importlib.util
    import os
    import subprocess

    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("SEEDLORA_REQUIRE_VLLM") == "1":
            pytest.fail("vLLM is required (SEEDLORA_REQUIRE_VLLM=1) but not installed")
        pytest.skip("vLLM is not installed (pip install 'seedlora[vllm]')")
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1",
               VLLM_CPU_OMP_THREADS_BIND="nobind", HF_HUB_OFFLINE="1", TMPDIR=str(tmp_path))
    result = subprocess.run([sys.executable, "examples/serve_vllm.py", "--demo"], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = {}
    for line in result.stdout.splitlines():
        label, _, tokens = line.strip().partition(": ")
        if label in ("base", "merged", "fused"):
            lines.setdefault(label, []).append(tokens)
    assert set(lines) == {"base", "merged", "fused"}, result.stdout
    assert lines["merged"] == lines["fused"] and lines["merged"] != lines["base"]
