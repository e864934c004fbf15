"""README "Your own task": its commands run as written, with a tiny Llama as BASE."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from _tiny import make_tiny_llama

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> str:
    """The first sh block of the README's "Your own task" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Your own task", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_readme_own_task_commands_run_as_written(tmp_path):
    base = make_tiny_llama(tmp_path / "tiny")
    script = readme_commands()
    assert script.startswith("BASE=")
    script = re.sub(r"^BASE=\S+", f"BASE={base}", script)  # the only change: a tiny base model
    script = re.sub(r"(^|\n)seedlora ", r"\1python -m seedlora ", script)  # this checkout's code, not an installed one
    (tmp_path / "examples").symlink_to(REPO / "examples")
    bin_dir = Path(sys.executable).parent  # `python` is this interpreter (its virtualenv)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "seed 2 done:" in done.stdout and "| seedlora |" in done.stdout
    result = json.loads((tmp_path / "runs" / "own-task-eval" / "results.json").read_text())
    assert result["labels"] == ["account", "billing", "delivery", "technical"] and result["examples"] == 48
    assert set(result["models"]) == {"base", "seed-0", "seed-1", "seed-2", "linear", "seedlora"}
    log = json.loads((tmp_path / "runs" / "own-task" / "seed-0" / "train_log.json").read_text())
    assert log["preset"] == "quick" and log["config"]["epochs"] == 3 and log["config"]["chat_template"].endswith("route.jinja")
