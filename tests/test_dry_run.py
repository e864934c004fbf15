"""`seedlora merge --dry-run`, logging levels and a closed pipe: what the CLI prints, and what it does not write.

The dry run's exact numbers (ranks, output size) are checked against the merge actually run
afterwards; the memory and time figures are estimates and are only checked to be stated.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from _adapters import make_adapters, save_tiny_llama
from seedlora.cli import main
from seedlora.safetensors_io import read_header

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    return [str(p) for p in make_adapters(tmp_path_factory.mktemp("inputs"), ranks=(2, 4, 8))]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def tensor_bytes(folder) -> int:
    """Bytes of tensor data in a folder's safetensors files (headers left out)."""
    return sum(info.nbytes for f in Path(folder).glob("*.safetensors") for info in read_header(f)[0].values())


@pytest.mark.parametrize("extra, ranks", [(["-m", "seedlora"], "exact 15 → rank 15"),
                                          (["-m", "ties", "--rank", "6"], "→ rank 6 (truncated)")])
def test_dry_run_prints_the_plan_writes_nothing_and_matches_the_real_merge(adapters, tmp_path, capsys, extra, ranks):
    output = tmp_path / "out"
    code, out, err = run(capsys, "merge", *adapters, *extra, "-o", str(output), "--dry-run")
    assert code == 0, err
    assert not output.exists() and list(tmp_path.iterdir()) == []  # no output, no staging folder
    modules = [line for line in out.splitlines() if line.startswith("  model.")]
    assert len(modules) == 4 and all("r=2+4+8" in line and ranks in line for line in modules), out
    assert "memory peak (estimate)" in out and "time (rough estimate)" in out and "GFLOP/s" in out
    size = next(line for line in out.splitlines() if line.startswith("output: "))
    assert run(capsys, "merge", *adapters, *extra, "-o", str(output))[0] == 0
    assert f"{tensor_bytes(output) / 1e3:.1f} KB of weights" in size, size


def test_dry_run_of_a_fused_merge_states_the_model_size(adapters, tmp_path, capsys):
    base = save_tiny_llama(tmp_path / "base")
    code, out, _ = run(capsys, "merge", *adapters, "--base", str(base), "--fuse", "-o", str(tmp_path / "fused"), "--dry-run")
    assert code == 0 and "fused exactly" in out and not (tmp_path / "fused").exists()
    assert run(capsys, "merge", *adapters, "--base", str(base), "--fuse", "-o", str(tmp_path / "fused"))[0] == 0
    assert f"{tensor_bytes(tmp_path / 'fused') / 1e3:.1f} KB" in out and "4 tensors merged" in out


def test_dry_run_refuses_what_the_merge_would_refuse(adapters, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("taken")
    code, _, err = run(capsys, "merge", *adapters, "-o", str(tmp_path / "full"), "--dry-run")
    assert code == 2 and "--overwrite" in err
    code, _, err = run(capsys, "merge", *adapters, "-m", "ties", "--density", "2", "-o", str(tmp_path / "x"), "--dry-run")
    assert code == 2 and "density" in err


def test_logging_levels(adapters, tmp_path, capsys):
    partial = make_adapters(tmp_path / "partial", ranks=(2,), targets=("q_proj",))[0]
    inputs = [adapters[0], str(partial)]
    _, _, err = run(capsys, "merge", *inputs, "-o", str(tmp_path / "a"))
    assert "warning: " in err and "not adapted by every input" in err and "merging 2 input(s)" not in err
    _, _, err = run(capsys, "merge", *inputs, "-o", str(tmp_path / "b"), "-v")
    assert "merging 2 input(s) with linear" in err and "warning: " in err
    _, out, err = run(capsys, "merge", *inputs, "-o", str(tmp_path / "c"), "-q")
    assert out == "" and err == ""


def test_a_closed_pipe_ends_quietly(adapters, tmp_path):
    read, write = os.pipe()
    os.close(read)  # the reader (e.g. `head`) has gone before the first line
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for argv in (["methods"], ["merge", *adapters, "-o", str(tmp_path / "o"), "--dry-run"]):
        done = subprocess.run([sys.executable, "-m", "seedlora", *argv], stdout=write, stderr=subprocess.PIPE,
                              text=True, env=env, timeout=120)
        assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
        assert done.returncode == 141
    os.close(write)
