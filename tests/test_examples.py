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
