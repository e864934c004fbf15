"""Every code block of README.md runs as written, top to bottom, as a user would type it.

The blocks are run unchanged in a sandbox: the repository's adapters/, examples/ and eval/ are
linked into a fresh working directory, HOME holds a stand-in for the SmolLM2 conversion
(~/.cache/seedlora/smollm2-135m-instruct: SmolLM2-135M's attention shapes, 30 layers, random
weights, a word-level tokenizer of the data sets, so the sample adapters load on it), HF_HOME is
an empty Hub cache and HF_HUB_OFFLINE=1. `seedlora`, `python` and `lm_eval` are this checkout's.
Each command is run, or (long runs) its options are checked against its --help, or it is in
NOT_RUN with the reason; a block with a command none of these covers fails the test.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# commands run as written (first matching prefix wins; HELP before RUN)
HELP = ("seedlora train", "seedlora diagnose", "python -m eval.experiment", "OMP_WAIT_POLICY=PASSIVE python -m eval.experiment")
RUN = ("seedlora ", "python -m eval.prepare_smollm2", "python -m eval.evaluate", "lm_eval ", "python -m eval.lm_eval_vllm ")
NOT_RUN = {
    "pip install": "installs packages: .ci/run performs the README's install",
    "python3 -m venv": "creates the virtualenv: .ci/run does",
    ". .venv/bin/activate": "activates the virtualenv: .ci/run does",
    "python -m pytest": "the test suite itself",
    "vllm serve": "the `vllm` command of the GPU package (the CPU wheel's fails, as the README says)",
    "curl ": "talks to a running vLLM server: tests/test_vllm_serving.py covers serving",
    "python -m vllm.entrypoints": "a record of a manual server run on a tiny Llama",
    "export ": "environment for the manual server run above",
}


def code_blocks(text: str) -> list:
    """[(language, body, line)] of the fenced blocks of a Markdown text."""
    found = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        found.append((match.group(1), match.group(2), text[: match.start()].count("\n") + 1))
    return found


def commands(body: str) -> list:
    """Shell commands of a block: continuations joined, comments dropped, `&&` chains split."""
    joined = body.replace("\\\n", " ")
    lines = [re.sub(r"\s+#\s.*$", "", line).strip() for line in joined.splitlines()]
    return [part.strip() for line in lines if line and not line.startswith("#") for part in line.split("&&")]


NEEDS_VLLM = ("python -m eval.lm_eval_vllm ",)  # run where vLLM is installed (always under SEEDLORA_REQUIRE_VLLM=1)


def vllm_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is None and os.environ.get("SEEDLORA_REQUIRE_VLLM") != "1"


def rule(command: str) -> str:
    if command.startswith(NEEDS_VLLM) and vllm_missing():
        return "skip"
    for prefix in NOT_RUN:
        if command.startswith(prefix):
            return "skip"
    if command.startswith(HELP):
        return "help"
    if command.startswith(RUN):
        return "run"
    return "unknown"


def word_tokenizer(folder: Path):
    """A word-level tokenizer of every word in eval/data (labels and numbers are single tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = set()
    for data in sorted((REPO / "eval" / "data").glob("*/*.jsonl")):
        for line in data.read_text().splitlines():
            row = json.loads(line)
            words.update(w for text in row.values() for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(str(text)))
    vocab = {token: i for i, token in enumerate(["<pad>", "<s>", "</s>", "<unk>", *sorted(words)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    tokenizer.save_pretrained(folder)
    return tokenizer


def smollm2_stand_in(folder: Path) -> None:
    """SmolLM2-135M's attention shapes (hidden 576, 9 heads, 3 KV heads, 30 layers), tiny MLP, random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = word_tokenizer(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=576, intermediate_size=16, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(folder)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    smollm2_stand_in(root / "home" / ".cache" / "seedlora" / "smollm2-135m-instruct")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name, target in (("python", "-"), ("seedlora", "seedlora"), ("lm_eval", "lm_eval")):
        run_line = f'exec {sys.executable} "$@"' if target == "-" else f'exec {sys.executable} -m {target} "$@"'
        (bin_dir / name).write_text(f"#!/bin/sh\n{run_line}\n")
        (bin_dir / name).chmod(0o755)
    work = root / "work"
    (work / "eval").mkdir(parents=True)
    for name in ("adapters", "examples"):
        (work / name).symlink_to(REPO / name)
    for path in (REPO / "eval").iterdir():
        if path.name not in ("runs", "__pycache__"):
            (work / "eval" / path.name).symlink_to(path)
    env = {**os.environ, "HOME": str(root / "home"), "HF_HOME": str(root / "hf"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO), "CI": "1"}
    env.pop("HF_HUB_CACHE", None)
    return {"root": root, "work": work, "env": env}


def shell(sandbox, command: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd or sandbox["work"], env=sandbox["env"],
                          capture_output=True, text=True, timeout=900)


def check_help(sandbox, command: str) -> None:
    """The command's program exists and knows every --option the README gives it."""
    words = command.split()
    program = words[: words.index("-m") + 2] if "-m" in words else words[:2]
    done = shell(sandbox, " ".join(program + ["--help"]))
    assert done.returncode == 0, done.stderr[-2000:]
    for option in (w for w in words if w.startswith("--")):
        assert option in done.stdout, f"README: {command!r} uses {option}, which `{' '.join(program)} --help` does not list"


def test_every_readme_block_runs_as_written(sandbox):
    readme = (REPO / "README.md").read_text()
    ran, unknown = [], []
    for language, body, line in code_blocks(readme):
        if language == "python":
            if "from vllm import" in body:
                continue  # needs a vLLM engine: examples/serve_vllm.py --demo runs the same calls (tests/test_examples.py)
            done = subprocess.run([sys.executable, "-c", body], cwd=sandbox["work"], env=sandbox["env"],
                                  capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, f"README.md:{line} python block failed:\n{done.stderr[-3000:]}"
            ran.append(line)
        elif language == "bash":
            for command in commands(body):
                kind = rule(command)
                if kind == "unknown":
                    unknown.append(f"README.md:{line}: {command}")
                elif kind == "help":
                    check_help(sandbox, command)
                elif kind == "run":
                    done = shell(sandbox, command)
                    assert done.returncode == 0, f"README.md:{line}: {command}\n{done.stdout[-1500:]}\n{done.stderr[-3000:]}"
                    ran.append(line)
    assert not unknown, "README commands no rule covers (add to RUN, HELP or NOT_RUN with the reason):\n" + "\n".join(unknown)
    work = sandbox["work"]
    assert (work / "merged" / "adapter_model.safetensors").is_file() and (work / "model-selection" / "config.json").is_file()
    assert json.loads((work / "fused" / "seedlora_provenance.json").read_text())["base"]["hub"]["repo_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert len(ran) >= 20


def test_the_documented_merge_output_is_what_merge_prints(sandbox, tmp_path):
    readme = (REPO / "README.md").read_text()
    blocks = [body for language, body, _ in code_blocks(readme) if language == "text"]
    command = next(b for b in blocks if b.startswith("$ seedlora merge")).strip().removeprefix("$ ")
    printed = blocks[blocks.index(next(b for b in blocks if b.startswith("$ seedlora merge"))) + 1]
    (tmp_path / "adapters").symlink_to(REPO / "adapters")
    done = shell(sandbox, command, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    timing = re.compile(r"\(\d+\.\d s\)")
    assert timing.sub("(T)", done.stdout).splitlines() == timing.sub("(T)", printed).splitlines()
