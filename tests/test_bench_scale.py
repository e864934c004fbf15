"""Smoke test of eval/bench_scale.py on its test-sized stand-in of a 70B layer: every route runs as
a whole process, the table and the target lines are printed, the JSON is written, and the
accuracy figures are right (timings are not asserted: the machine is shared and noisy)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval.bench_scale import ERROR_MODULES
from eval.scale.reference import reference

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_layer_part_runs_end_to_end(tmp_path):
    out_json = tmp_path / "bench.json"
    command = [sys.executable, "-m", "eval.bench_scale", "--parts", "layer70b", "--preset-70b", "tiny-gqa",
               "--no-mergekit", "--threads", "1", "--work", str(tmp_path / "work"), "--out-json", str(out_json)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    assert "rel.err" in table and "x floor" in table and "peak GB" in table
    rows = json.loads(out_json.read_text())["parts"]["layer70b"]
    assert set(rows) == {"floor: read+write r64", "floor: materialise+sum", "seedlora ties --rank 64",
                         "seedlora dare_ties --rank 64", "seedlora selection --rank 64", "floor: copy base",
                         "seedlora ties --fuse"}
    for row in rows.values():
        assert row["seconds"] > 0 and row["peak_gb"] > 0
    # the copy and the fused route ran 3 times, interleaved; the table shows the median
    for label in ("floor: copy base", "seedlora ties --fuse"):
        assert len(rows[label]["runs"]) == 3 and rows[label]["seconds"] == sorted(rows[label]["runs"])[1]
    assert "(median of 3:" in table
    # small modules take the exact SVD: the error is the optimal rank-64 one of the float64 reference
    adapters = sorted((tmp_path / "work" / "adapters-tiny-gqa-1").iterdir())
    for label, method, density in (("seedlora ties --rank 64", "ties", 0.2), ("seedlora dare_ties --rank 64", "dare_ties", 0.5)):
        lost = total = 0.0
        for name in ERROR_MODULES["layer70b"]:
            s = torch.linalg.svdvals(reference(method, adapters, name, density=density))
            lost, total = lost + float(s[64:].square().sum()), total + float(s.square().sum())
        assert rows[label]["rel_err"] == pytest.approx(math.sqrt(lost / total), rel=1e-4), label
    # a bf16 fused model cannot beat rounding W + τ once: seedlora's sits at that floor
    fused = rows["seedlora ties --fuse"]
    assert fused["rel_err"] <= 1.01 * fused["bf16_floor"]
    verdicts = [line for line in table.splitlines() if line.startswith(("PASS", "FAIL", "n/a"))]
    assert len(verdicts) == 2
