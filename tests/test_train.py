"""`seedlora train` on a tiny Llama: reproducibility, what `vary` changes, resume, outputs, CLI."""

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from _tiny import make_tiny_llama
from seedlora.cli import main
from seedlora.errors import OutputExistsError, SeedLoraError
from seedlora.train import train_adapters

REPO = Path(__file__).resolve().parents[1]
N_ROWS = 16  # batch 4 -> 4 steps per epoch


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    base = make_tiny_llama(root / "base")
    rows = [{"prompt": f"Tweet {i}: {'good' if i % 2 else 'bad'} day. Sentiment:",
             "completion": " positive" if i % 2 else " negative"} for i in range(N_ROWS)]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return base, data


def train(setup, out, seeds=(0,), **options):
    base, data = setup
    settings = {"epochs": 2, "batch_size": 4, "lr": 1e-2, "progress": False, **options}
    return train_adapters(base, data, out, list(seeds), **settings)


def adapter_bytes(folder):
    return (folder / "adapter_model.safetensors").read_bytes()


def samples(folder):
    rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    return {r["index"]: r for r in rows}


def order(folder):
    """Row indices in first-epoch order."""
    return [i for i, _ in sorted(samples(folder).items(), key=lambda kv: kv[1]["first_epoch_position"])]


def batches(folder):
    """First-epoch batches (as sets of row indices), in training order."""
    steps = defaultdict(set)
    for index, row in samples(folder).items():
        steps[row["first_epoch_step"]].add(index)
    return [frozenset(steps[s]) for s in sorted(steps)]


def log(folder):
    return json.loads((folder / "train_log.json").read_text())


def test_same_seed_gives_byte_identical_adapter(setup, tmp_path):
    (a,) = train(setup, tmp_path / "a", seeds=[3])
    (b,) = train(setup, tmp_path / "b", seeds=[3])
    assert adapter_bytes(a) == adapter_bytes(b)
    assert (a / "samples.jsonl").read_bytes() == (b / "samples.jsonl").read_bytes()
    assert log(a)["losses"] == log(b)["losses"]


def test_outputs_load_in_peft_and_record_every_sample(setup, tmp_path):
    (folder,) = train(setup, tmp_path, rank=4, alpha=8, eval_split=0.25)
    assert folder == tmp_path / "seed-0" and not (folder / "checkpoints").exists()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(setup[0]), folder)
    assert model.peft_config["default"].r == 4 and model.peft_config["default"].lora_alpha == 8
    weights = load_file(folder / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in weights.items())
    rows = samples(folder)
    assert len(rows) == 12  # 4 of 16 held out
    assert sorted(r["first_epoch_position"] for r in rows.values()) == list(range(12))
    assert all(r["final_loss"] > 0 and r["seen_in_first_epoch"] for r in rows.values())
    record = log(folder)
    assert record["steps"] == 6 and [e["epoch"] for e in record["eval_losses"]] == [0, 1]
    assert record["losses"][-1]["loss"] < record["losses"][0]["loss"]


def test_vary_order_changes_order_not_init(setup, tmp_path):
    a, b = train(setup, tmp_path, seeds=[0, 1], vary="order")
    assert order(a) != order(b)
    assert log(a)["init_digest"] == log(b)["init_digest"]


def test_vary_init_changes_init_not_order(setup, tmp_path):
    a, b = train(setup, tmp_path, seeds=[0, 1], vary="init")
    assert order(a) == order(b)
    assert log(a)["init_digest"] != log(b)["init_digest"]
    assert adapter_bytes(a) != adapter_bytes(b)


def test_vary_both_changes_order_and_init(setup, tmp_path):
    a, b = train(setup, tmp_path, seeds=[0, 1], vary="both")
    assert order(a) != order(b)
    assert log(a)["init_digest"] != log(b)["init_digest"]


def test_fixed_batches_permutes_identical_batches(setup, tmp_path):
    a, b = train(setup, tmp_path, seeds=[0, 1], vary="fixed-batches")
    assert set(batches(a)) == set(batches(b)) and len(batches(a)) == 4
    assert batches(a) != batches(b)
    assert log(a)["init_digest"] == log(b)["init_digest"]


class InterruptAt(TrainerCallback):
    """Stops the process (as Ctrl-C would) at the end of optimizer step `step`, before its checkpoint."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


# 12 training rows, batch 4: 3 steps per epoch; stop during step 5 (second epoch)
@pytest.mark.parametrize("stop, save_steps, resumed_from", [(5, None, 3), (5, 1, 4)])
def test_interrupted_run_resumes_to_the_same_adapter(setup, tmp_path, stop, save_steps, resumed_from):
    (reference,) = train(setup, tmp_path / "ref", eval_split=0.25, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        train(setup, tmp_path / "run", eval_split=0.25, epochs=3, save_steps=save_steps, callbacks=[InterruptAt(stop)])
    (checkpoint,) = (tmp_path / "run" / "seed-0" / "checkpoints").glob("checkpoint-*")
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == resumed_from
    (resumed,) = train(setup, tmp_path / "run", eval_split=0.25, epochs=3, save_steps=save_steps)
    assert adapter_bytes(resumed) == adapter_bytes(reference)
    assert samples(resumed) == samples(reference)
    assert log(resumed)["losses"] == log(reference)["losses"]
    assert log(resumed)["eval_losses"] == log(reference)["eval_losses"]
    assert (log(resumed)["resumed_from"], log(resumed)["steps_run"]) == (f"checkpoint-{resumed_from}", 9 - resumed_from)
    assert (log(reference)["resumed_from"], log(reference)["steps_run"]) == (None, 9)


def test_finished_seed_is_kept_and_other_settings_are_refused(setup, tmp_path):
    (folder,) = train(setup, tmp_path)
    stamp = (folder / "adapter_model.safetensors").stat().st_mtime_ns
    train(setup, tmp_path)
    assert (folder / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(OutputExistsError, match="other settings; pass --overwrite"):
        train(setup, tmp_path, lr=1e-3)
    with pytest.raises(OutputExistsError, match="not empty"):
        train(setup, tmp_path, resume=False)
    train(setup, tmp_path, lr=1e-3, overwrite=True)
    assert log(folder)["config"]["lr"] == 1e-3


def test_separate_eval_file_is_scored_each_epoch(setup, tmp_path):
    held = tmp_path / "held.csv"
    held.write_text("prompt,completion\nTweet x: good. Sentiment:, positive\nTweet y: bad. Sentiment:, negative\n")
    (folder,) = train(setup, tmp_path / "out", eval_split=str(held))
    record = log(folder)
    assert (record["n_train"], record["n_eval"]) == (N_ROWS, 2)
    assert len(record["eval_losses"]) == 2 and record["eval_losses"][1]["loss"] > 0


def test_grad_accumulation_equals_the_larger_batch(setup, tmp_path):
    (a,) = train(setup, tmp_path / "a", batch_size=2, grad_accum=2)
    (b,) = train(setup, tmp_path / "b", batch_size=4, grad_accum=1)
    wa, wb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert order(a) == order(b)


def test_max_steps_and_warmup_schedule(setup, tmp_path):
    (folder,) = train(setup, tmp_path, max_steps=6, warmup_steps=2, scheduler="linear")
    lrs = [entry["lr"] for entry in log(folder)["losses"]]
    assert len(lrs) == 6
    assert lrs[:3] == pytest.approx([0.0, 5e-3, 1e-2])
    assert lrs[3:] == pytest.approx([1e-2 * 3 / 4, 1e-2 * 2 / 4, 1e-2 * 1 / 4])


def test_invalid_settings_are_refused_before_training(setup, tmp_path):
    with pytest.raises(SeedLoraError, match="--load-in-4bit needs a CUDA GPU"):
        train(setup, tmp_path, load_in_4bit=True, device="cpu")
    with pytest.raises(SeedLoraError, match="fix --vary"):
        train(setup, tmp_path, vary="shuffle")
    with pytest.raises(SeedLoraError, match="unknown training option"):
        train(setup, tmp_path, learning_rate=1.0)
    with pytest.raises(SeedLoraError, match="distinct"):
        train(setup, tmp_path, seeds=[1, 1])
    assert not (tmp_path / "seed-0").exists()


def test_cli_trains_every_seed(setup, tmp_path, capsys):
    base, data = setup
    code = main(["train", "--base", str(base), "--data", str(data), "-o", str(tmp_path), "--seeds", "5", "6",
                 "--rank", "2", "--targets", "q_proj", "v_proj", "--max-steps", "2", "--batch-size", "4",
                 "--eval-split", "0.25", "--scheduler", "cosine", "--warmup-ratio", "0.5"])
    assert code == 0
    assert "seed-5" in capsys.readouterr().out
    config = json.loads((tmp_path / "seed-6" / "adapter_config.json").read_text())
    assert config["r"] == 2 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert log(tmp_path / "seed-6")["steps"] == 2


def test_final_sample_losses_come_from_the_training_steps(setup, tmp_path):
    """Each row's recorded loss is its loss in its last step: per step they pool to the logged step loss."""
    (folder,) = train(setup, tmp_path, epochs=2)
    record, rows = log(folder), samples(folder).values()
    last_epoch = [entry for entry in record["losses"] if entry["step"] > record["steps_per_epoch"]]
    for entry in last_epoch:
        step_rows = [r for r in rows if r["final_loss_step"] == entry["step"]]
        assert len(step_rows) == 4
        pooled = sum(r["final_loss"] * r["tokens"] for r in step_rows) / sum(r["tokens"] for r in step_rows)
        assert pooled == pytest.approx(entry["loss"], rel=1e-5)
    assert record["final_train_loss"] == pytest.approx(
        sum(r["final_loss"] * r["tokens"] for r in rows) / sum(r["tokens"] for r in rows))


def test_gradient_checkpointing_trains_the_same_adapter(setup, tmp_path):
    (a,) = train(setup, tmp_path / "a", max_steps=3)
    (b,) = train(setup, tmp_path / "b", max_steps=3, gradient_checkpointing=True)
    wa, wb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert log(b)["config"]["gradient_checkpointing"] is True


def test_presets_set_defaults_and_flags_override_them(setup, tmp_path):
    (quick,) = train(setup, tmp_path / "q", preset="quick", epochs=1)
    config = log(quick)["config"]
    assert (log(quick)["preset"], config["lr"], config["scheduler"], config["warmup_ratio"]) == ("quick", 1e-2, "linear", 0.1)
    (papers,) = train(setup, tmp_path / "p", epochs=1, lr=1e-3)
    config = log(papers)["config"]
    assert (log(papers)["preset"], config["scheduler"], config["warmup_ratio"], config["vary"]) == ("papers", "cosine", 0.03, "both")
    with pytest.raises(SeedLoraError, match="unknown preset"):
        train(setup, tmp_path / "x", preset="fast")


def test_cli_prints_progress_lines_without_a_terminal(setup, tmp_path, capsys):
    base, data = setup
    code = main(["train", "--base", str(base), "--data", str(data), "-o", str(tmp_path), "--seeds", "1",
                 "--max-steps", "4", "--batch-size", "4", "--log-every", "2", "--preset", "quick"])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    lines = [line for line in out if line.startswith("seed 1 step")]
    assert [line.split()[3] for line in lines] == ["2/4", "4/4"]
    assert all(" loss " in line and " lr " in line and " s/step ETA " in line for line in lines)
    assert any(line.startswith("seed 1 done: 4 steps") for line in out)
    assert any("(quick preset)" in line for line in out)


def test_fp16_on_cpu_is_refused_bf16_autocast_trains(setup, tmp_path):
    with pytest.raises(SeedLoraError, match="fp16 needs a CUDA GPU"):
        train(setup, tmp_path / "a", mixed_precision="fp16", device="cpu")
    (folder,) = train(setup, tmp_path / "b", mixed_precision="bf16", max_steps=2, device="cpu")
    assert all(torch.isfinite(t).all() for t in load_file(folder / "adapter_model.safetensors").values())


@pytest.mark.slow
def test_two_gloo_processes_train_the_single_process_adapter(setup, tmp_path):
    """`torchrun --nproc_per_node 2` (CPU, gloo): batch 2 per process equals batch 4 in one process."""
    base, data = setup
    common = ["--base", str(base), "--data", str(data), "--seeds", "0", "--max-steps", "6", "--lr", "1e-2",
              "--eval-split", "0.25", "--device", "cpu", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "seedlora", "train", *common, "-o", str(tmp_path / "ddp"), "--batch-size", "2"]
    subprocess.run(command, check=True, env=env, cwd=tmp_path, capture_output=True, timeout=300)
    assert main(["train", *common, "-o", str(tmp_path / "one"), "--batch-size", "4"]) == 0
    ddp, one = tmp_path / "ddp" / "seed-0", tmp_path / "one" / "seed-0"
    wa, wb = load_file(ddp / "adapter_model.safetensors"), load_file(one / "adapter_model.safetensors")
    assert set(wa) == set(wb) and any(wb[k].abs().max() > 1e-3 for k in wb)
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa)
    assert (log(ddp)["processes"], log(ddp)["global_batch"], log(one)["processes"]) == (2, 4, 1)
    assert [e["loss"] for e in log(ddp)["losses"]] == pytest.approx([e["loss"] for e in log(one)["losses"]], rel=1e-5)
    assert order(ddp) == order(one)
    for index, row in samples(one).items():
        assert samples(ddp)[index]["final_loss_step"] == row["final_loss_step"]
        assert samples(ddp)[index]["final_loss"] == pytest.approx(row["final_loss"], rel=1e-5)


def test_hub_id_base_trains_and_evaluates_offline_from_the_hub_cache(setup, tmp_path):
    """`--base org/name` resolves through the Hub cache (HF_HUB_OFFLINE=1), as `seedlora merge --base` does."""
    from _hub_cache import cache_repo

    base, data = setup
    home = tmp_path / "hf_home"
    cache_repo(home, "org/tiny-llama", base)
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_CACHE", None)
    run = lambda *argv: subprocess.run([sys.executable, "-m", *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    done = run("seedlora", "train", "--base", "org/tiny-llama", "--data", str(data), "-o", "runs", "--seeds", "0",
               "--max-steps", "2", "--batch-size", "4", "--lr", "1e-2", "-q")
    assert done.returncode == 0, done.stderr[-2000:]
    (reference,) = train(setup, tmp_path / "local", max_steps=2)
    assert adapter_bytes(tmp_path / "runs" / "seed-0") == adapter_bytes(reference)
    done = run("eval.evaluate", "--base", "org/tiny-llama", "--data", str(data), "--task", "sentiment", "--quiet",
               "--single", "seed-0=runs/seed-0", "--output", "eval-out")
    assert done.returncode == 0, done.stderr[-2000:]
    missing = run("seedlora", "train", "--base", "org/not-cached", "--data", str(data), "-o", "x", "-q")
    assert missing.returncode == 2 and "not in the Hub cache" in missing.stderr and not (tmp_path / "x").exists()
