"""Refusals: one line on stderr, a non-zero exit, nothing written, the inputs byte-identical.

And the other half of "nothing half-written": a merge killed at any point while writing leaves
either the previous output or the complete new one (killed for real, with SIGKILL, in a
subprocess at several points of the write).
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from _adapters import make_adapter, make_adapters, save_tiny_llama
from seedlora.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def workspace(tmp_path):
    """Three adapters under tmp_path/adapters and a base model under tmp_path/base."""
    adapters = make_adapters(tmp_path / "adapters", ranks=(2, 4, 4))
    base = save_tiny_llama(tmp_path / "base")
    return tmp_path, [str(a) for a in adapters], str(base)


def snapshot(*roots) -> dict:
    """sha256 of every file under the given folders."""
    files = {}
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if path.is_file():
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def refuse(capsys, argv, *protected, words) -> str:
    before = snapshot(*protected)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert words in err, err
    assert snapshot(*protected) == before  # inputs and base byte-identical
    return err


@pytest.mark.parametrize("spelling", ["{a0}", "{a0}/.", "{a0}/../adapter0", "{a0}/sub"])
def test_output_equal_to_or_inside_an_input_is_refused_even_with_overwrite(workspace, capsys, spelling):
    root, adapters, _ = workspace
    output = spelling.format(a0=adapters[0])
    refuse(capsys, ["merge", *adapters, "-o", output, "--overwrite"], root / "adapters", words="an input or the base model")
    assert not (Path(adapters[0]) / "sub").exists()


def test_output_containing_the_inputs_is_refused_even_with_overwrite(workspace, capsys):
    root, adapters, _ = workspace
    err = refuse(capsys, ["merge", *adapters, "-o", str(root / "adapters"), "--overwrite"], root / "adapters",
                 words="contains")
    assert "choose an output folder elsewhere" in err


def test_fused_output_over_the_base_is_refused_even_with_overwrite(workspace, capsys):
    root, adapters, base = workspace
    refuse(capsys, ["merge", *adapters, "--base", base, "--fuse", "-o", base, "--overwrite"], root,
           words="an input or the base model")


def test_nan_input_is_refused_naming_the_tensor(workspace, capsys):
    root, adapters, _ = workspace
    weights = Path(adapters[1]) / "adapter_model.safetensors"
    state = load_file(weights)
    state["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"][0, 0] = float("nan")
    save_file(state, weights)
    refuse(capsys, ["merge", *adapters, "-o", str(root / "out")], root / "adapters",
           words="module model.layers.1.self_attn.v_proj lora_B contains NaN")
    assert not (root / "out").exists() and not list(root.glob(".out*"))


def test_empty_input_list_is_refused(workspace, capsys):
    root, _, _ = workspace
    refuse(capsys, ["merge", "-o", str(root / "out")], root / "adapters", words="no inputs given")
    assert not (root / "out").exists()


def edit_config(folder, **changes):
    path = Path(folder) / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"bias": "all"}, "bias='all'/'lora_only'): trains the base layers' own bias vectors"),
        ({"trainable_token_indices": [3, 4]}, "trainable tokens"),
        ({"layer_replication": [[0, 2]]}, "layer_replication"),
        ({"use_qalora": True}, "QALoRA"),
        ({"init_lora_weights": "pissa"}, "PiSSA"),
        ({"peft_type": "VERA"}, "peft_type VERA"),
        ({"target_modules": ["q_proj", "v_proj", "o_proj"]}, "holds no o_proj factors"),
    ],
)
def test_unsupported_or_inconsistent_inputs_are_refused_with_the_reason(workspace, capsys, changes, words):
    root, adapters, _ = workspace
    edit_config(adapters[2], **changes)
    err = refuse(capsys, ["merge", *adapters, "-o", str(root / "out")], root / "adapters", words=words)
    assert not (root / "out").exists()
    assert "not supported; retrain with bias='none'" not in err  # no self-contradicting advice


def test_one_input_is_a_resize_and_the_same_input_twice_is_a_warning(workspace, capsys):
    root, adapters, _ = workspace
    assert main(["merge", adapters[2], "-o", str(root / "cast"), "--dtype", "bfloat16", "--rank", "2"]) == 0
    out, err = capsys.readouterr()
    assert "merged 1 adapter with linear" in out and "truncated to rank 2" in out and not err
    assert main(["merge", adapters[0], adapters[0], "-o", str(root / "twice")]) == 0
    assert "given twice" in capsys.readouterr().err
    assert main(["merge", adapters[0], adapters[0], "-o", str(root / "strict"), "--strict"]) == 2
    assert "given twice" in capsys.readouterr().err and not (root / "strict").exists()


def test_differing_base_model_names_warn_and_strict_refuses(workspace, capsys):
    root, adapters, _ = workspace
    for folder, name in zip(adapters, ["org/base", "someone/other-model", "org/base"]):
        edit_config(folder, base_model_name_or_path=name)
    assert main(["merge", *adapters, "-o", str(root / "out")]) == 0
    assert "different base models" in capsys.readouterr().err
    refuse(capsys, ["merge", *adapters, "-o", str(root / "strict"), "--strict"], root / "adapters", words="different base models")


# ------------------------------------------------------------------ killed while writing
KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import seedlora.sinks.adapter_folder as adapter_sink
    import seedlora.sinks.shard_writer as shard_writer
    import seedlora.sinks.staging as staging
    from seedlora import fuse_adapters, merge_adapters

    point, output, base, inputs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)

    def wrap(owner, name, before=False, after=False, nth=1):
        original, calls = getattr(owner, name), []
        def patched(*args, **kwargs):
            calls.append(1)
            if before and len(calls) == nth:
                die()
            result = original(*args, **kwargs)
            if after and len(calls) == nth:
                die()
            return result
        setattr(owner, name, patched)

    if point == "half-weights":  # the weights file is half written when the process dies
        def half(state, path, metadata=None):
            Path(path).write_bytes(b"x" * 1000)
            die()
        adapter_sink.save_file = half
    elif point == "before-report":
        wrap(adapter_sink, "write_json", before=True, nth=2)
    elif point == "before-swap":
        wrap(staging, "_exchange", before=True)
    elif point == "after-swap":
        wrap(staging, "_exchange", after=True)
    elif point == "mid-shard":
        wrap(shard_writer.ShardWriter, "_write_all", before=True, nth=3)
    if point == "mid-shard":
        fuse_adapters(inputs, base, output, method="ties", overwrite=True)
    else:
        merge_adapters(inputs, output, method="seedlora", overwrite=True)
""")


@pytest.mark.parametrize("point", ["half-weights", "before-report", "before-swap", "after-swap", "mid-shard"])
def test_killed_merge_leaves_the_previous_output_or_the_complete_new_one(workspace, capsys, point):
    from seedlora import fuse_adapters, merge_adapters

    root, adapters, base = workspace
    fused = point == "mid-shard"
    output, expected = root / "out", root / "expected"
    if fused:  # previous output: a linear fuse; the killed run writes ties
        fuse_adapters(adapters, base, output, method="linear")
        fuse_adapters(adapters, base, expected, method="ties")
    else:
        merge_adapters(adapters, output, method="linear")
        merge_adapters(adapters, expected, method="seedlora")
    previous = {Path(k).name: v for k, v in snapshot(output).items()}
    complete = {Path(k).name: v for k, v in snapshot(expected).items()}
    run = subprocess.run([sys.executable, "-c", KILLER, point, str(output), base, *adapters],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == -signal.SIGKILL, run.stderr
    now = {Path(k).name: v for k, v in snapshot(output).items()}
    assert now in (previous, complete), point
    assert now == (complete if point == "after-swap" else previous)
    # the next run cleans up what the killed one left beside the output, and succeeds
    merge_adapters(adapters, root / "out", method="linear", overwrite=True) if not fused else fuse_adapters(
        adapters, base, output, method="linear", overwrite=True)
    assert not list(root.glob(".out.seedlora-staging-*"))
