"""Smoke test of eval/bench_merge.py: a tiny configuration runs end to end, prints its table
and PASS/FAIL lines and writes its JSON. No timing is asserted (the machine is shared and
noisy); what is asserted is that every method ran and that the accuracy figures are right:
exact merges reproduce their targets and the truncated outputs are the optimal rank-16 ones.
"""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "eval" / "bench_merge.py"
METHODS = ["floor", "linear", "seedlora", "linear_trunc", "peft_cat", "peft_svd", "peft_svd_thin"]
LABELS = ["read+write floor", "seedlora linear (r24)", "seedlora seedlora (r25)", "seedlora linear --rank 16",
          "PEFT cat (r24)", "PEFT svd r16 (default)", "PEFT svd r16 full_matrices=False"]


def test_tiny_benchmark_prints_table_and_writes_json(tmp_path):
    out_json = tmp_path / "bench.json"
    command = [sys.executable, str(SCRIPT), "--hidden", "64", "--intermediate", "172", "--layers", "2",
               "--svd-layers", "1", "--repeats", "1", "--out-json", str(out_json)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    table = done.stdout
    assert "s/layer" in table and "x cat" in table and "x floor" in table and "peak MB" in table
    for label in LABELS:
        assert any(line.startswith(label) for line in table.splitlines()), label
    verdicts = [line for line in table.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(verdicts) == 4

    result = json.loads(out_json.read_text())
    assert result["report"] == table.rstrip("\n")
    for name in METHODS:
        row = result["rows"][name]
        assert row["seconds_per_layer"] > 0 and len(row["seconds"]) == 1
    assert result["rows"]["peft_svd"]["layers"] == 1 and result["rows"]["linear"]["layers"] == 2
    assert "load_seconds_per_layer" in result["rows"]["peft_cat"]

    errors = result["errors"]
    for exact in ("linear", "seedlora", "peft_cat"):  # float32 outputs of exact merges
        assert errors[exact] < 1e-6, (exact, errors[exact])
    # K=3 rank-8 random updates cut to rank 16 lose about a third of their energy
    assert 0.2 < errors["linear_trunc"] < 0.8
    for svd in ("peft_svd", "peft_svd_thin"):  # both are the optimal truncation, to float32 rounding
        assert abs(errors["linear_trunc@svd"] - errors[svd]) < 1e-5 * errors[svd]
    assert len(result["targets"]) == 4 and all(isinstance(t["passed"], bool) for t in result["targets"])
