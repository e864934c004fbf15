"""The fused-merge benchmark runs end to end on a tiny model and reports what it measured.

A smoke run of eval/bench_fused.py (~10M parameters, three shards): every route (disk copy,
seedlora fused merge, PEFT merge_and_unload + save_pretrained) runs in its own process and
reports wall time and peak memory; seedlora's and PEFT's fused weights agree to bf16 rounding;
the scratch files are deleted. The 1B-parameter numbers are in the README, not checked here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_fused_smoke(tmp_path):
    work, report_file = tmp_path / "work", tmp_path / "report.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "eval" / "bench_fused.py"), "--params", "10M", "--shard-size", "8MB",
         "--workdir", str(work), "--json", str(report_file)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert 9e6 <= report["params"] <= 1.5e7
    assert report["largest_shard"] <= 8e6 + 1e6 and report["weight_bytes"] > 2 * report["largest_shard"]
    for route in ("copy", "seedlora", "peft"):
        measured = report["routes"][route]
        assert 0 < measured["seconds"] <= measured["durable_seconds"] and measured["cpu_seconds"] >= 0
        assert measured["peak_rss"] >= measured["import_rss"] > 0
        assert route in run.stdout
    # fused with float32 math and cast once: within one bf16 rounding step of PEFT's weights
    assert report["agreement"]["identical_share"] > 0.8
    assert report["agreement"]["max_abs_diff"] < 4e-3
    assert set(report["targets"]) == {"throughput >= 1/2 copy (page cache)", "throughput >= 1/2 copy (durable)",
                                      "peak < largest shard + 1 GiB", "peak >= 3x below PEFT"}
    assert "target peak < largest shard + 1 GiB: met" in run.stdout
    assert list(work.iterdir()) == []  # scratch files deleted
