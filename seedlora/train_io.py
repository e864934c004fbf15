"""Files and models around the training loop: load, checkpoint, resume, write results.

Kept apart from `train.py` (the loop itself) so each stays small. A seed folder is
`checkpoint/` while training, then adapter files + samples.jsonl + train_log.json, the
last written with "complete": true as the marker that the seed is finished. Checkpoints
are written to `checkpoint.tmp/` and renamed, so a crash never leaves a half checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .data import Fields, load_examples, mean_loss, per_sample_losses, plan_epoch, split_examples
from .errors import OutputExistsError, SeedLoraError
from .rng import module_generator

_NOT_RESULT = ("save_every_epoch", "save_steps", "device")  # settings that do not change the adapter


def prepare_run(base: Path, data: Path, config, progress: bool, callback):
    """Check inputs, pick the device, load the tokenizer and tokenise the data once."""
    from transformers import AutoTokenizer

    from .train import Run

    if not (base / "config.json").is_file():
        raise SeedLoraError(f"base model folder {base} has no config.json; pass a local transformers model folder")
    device = _device(config)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    fields = Fields(config.prompt_field, config.completion_field, config.text_field)
    train = load_examples(data, tokenizer, fields, config.max_length)
    held = []
    if isinstance(config.eval_split, float):
        train, held = split_examples(train, config.eval_split, config.fixed_seed)
    elif config.eval_split is not None:
        held = load_examples(config.eval_split, tokenizer, fields, config.max_length)
    return Run(base, data, config, tokenizer, train, held, device, progress, callback)


def _device(config) -> torch.device:
    """The training device; 4-bit loading needs CUDA and bitsandbytes."""
    name = config.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if config.load_in_4bit:
        if device.type != "cuda":
            raise SeedLoraError("--load-in-4bit needs a CUDA GPU (bitsandbytes); drop it to train on CPU")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as error:
            raise SeedLoraError("--load-in-4bit needs bitsandbytes; run `pip install bitsandbytes`") from error
    return device


def identity(run, seed: int) -> dict:
    """What must match for an existing seed folder to be kept or resumed."""
    config = {k: v for k, v in asdict(run.config).items() if k not in _NOT_RESULT}
    return {"base_model": str(run.base_model.resolve()), "data": str(run.data.resolve()), "seed": seed, "config": config}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def claim_folder(folder: Path, ident: dict, resume: bool, overwrite: bool) -> Path | str | None:
    """'done' (finished, keep), a checkpoint folder to resume, or None (start fresh)."""
    shutil.rmtree(folder / "checkpoint.tmp", ignore_errors=True)
    if overwrite:
        shutil.rmtree(folder, ignore_errors=True)
    if not folder.exists() or not any(folder.iterdir()):
        return None
    log = _read_json(folder / "train_log.json") or {}
    state = _read_json(folder / "checkpoint" / "trainer_state.json") or {}
    found = log if log.get("complete") else state
    if resume and found.get("identity") == ident:
        return "done" if found is log else folder / "checkpoint"
    if resume and found:
        raise OutputExistsError(f"{folder} was trained with other settings; pass --overwrite or another -o folder")
    raise OutputExistsError(f"{folder} is not empty; pass --overwrite to replace it or drop --no-resume to continue")


@contextlib.contextmanager
def deterministic(device: torch.device):
    """Deterministic kernels and a private global RNG (dropout) for the duration of training."""
    previous = torch.are_deterministic_algorithms_enabled()
    devices = [device.index or 0] if device.type == "cuda" else []
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        torch.use_deterministic_algorithms(previous)


def build_model(run, init_seed: int):
    """Base model with fresh LoRA layers whose A factors come from (init_seed, module name)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    c = run.config
    kwargs = {"dtype": getattr(torch, c.dtype)}
    if c.load_in_4bit:
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if c.dtype == "float32" else getattr(torch, c.dtype)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute
        )
        kwargs["device_map"] = {"": run.device.index or 0}
    model = AutoModelForCausalLM.from_pretrained(str(run.base_model), **kwargs)
    if c.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model.to(run.device)
    lora = LoraConfig(
        r=c.rank, lora_alpha=c.alpha, lora_dropout=c.dropout, target_modules=c.target_modules,
        bias="none", task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    init_lora(model, init_seed)
    return model


@torch.no_grad()
def init_lora(model, init_seed: int) -> None:
    """Kaiming-uniform A (as PEFT does) from a per-module generator, B zero."""
    for name, module in model.named_modules():
        if not hasattr(module, "lora_A") or not isinstance(module.lora_A, torch.nn.ModuleDict):
            continue
        for layer in module.lora_A.values():
            weight = torch.empty(layer.weight.shape, dtype=torch.float32)
            torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=module_generator(init_seed, name))
            layer.weight.copy_(weight)
        for layer in module.lora_B.values():
            layer.weight.zero_()


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def digest(model) -> str:
    """sha256 over the trainable tensors' names and bytes, in name order."""
    hasher = hashlib.sha256()
    for name, tensor in sorted(_trainable(model).items()):
        hasher.update(name.encode())
        hasher.update(tensor.float().numpy().tobytes())
    return hasher.hexdigest()


def save_checkpoint(folder: Path, model, optimizer, scheduler, state) -> None:
    """Weights, optimizer, schedule, RNG and position, swapped in atomically."""
    tmp, final = folder / "checkpoint.tmp", folder / "checkpoint"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_trainable(model), str(tmp / "adapter.safetensors"))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng}, tmp / "state.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(asdict(state)))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def load_checkpoint(checkpoint: Path, model, optimizer, scheduler):
    """Restore everything `save_checkpoint` wrote; return the State."""
    from .train import State

    weights = load_file(str(checkpoint / "adapter.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    saved = torch.load(checkpoint / "state.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"]["cpu"])
    if "cuda" in saved["rng"]:
        torch.cuda.set_rng_state(saved["rng"]["cuda"])
    return State(**json.loads((checkpoint / "trainer_state.json").read_text()))


def _clean(value: float) -> float | None:
    return None if value is None or math.isnan(value) else value


def end_epoch(run, folder: Path, model, state, epoch: int) -> None:
    """Held-out loss after an epoch, and the epoch's adapter when save_every_epoch is on."""
    if run.held:
        losses = per_sample_losses(model, run.held, run.tokenizer.pad_token_id, run.config.batch_size)
        state.eval_losses.append({"epoch": epoch, "step": state.step, "loss": _clean(mean_loss(losses, run.held))})
        model.train()
    if run.config.save_every_epoch:
        model.save_pretrained(str(folder / f"epoch-{epoch + 1}"))


def first_epoch_positions(run, seeds: dict) -> dict[int, tuple[int, int]]:
    """Example position in the train list -> (rank in the first epoch, optimizer step index)."""
    unit = run.config.batch_size * run.config.grad_accum
    batches = plan_epoch(len(run.train), unit, 0, seeds["order"], seeds["compose"])
    out, rank = {}, 0
    for step, batch in enumerate(batches):
        for position in batch:
            out[position] = (rank, step)
            rank += 1
    return out


def write_outputs(run, seed: int, seeds: dict, folder: Path, model, state, losses: list[float]) -> None:
    """Adapter, samples.jsonl and train_log.json ("complete" marker last); drop the checkpoint."""
    model.save_pretrained(str(folder))
    positions = first_epoch_positions(run, seeds)
    rows = []
    for i, (example, loss) in enumerate(zip(run.train, losses)):
        rank, step = positions[i]
        rows.append({
            "index": example.index, "first_epoch_position": rank, "first_epoch_step": step,
            "seen_in_first_epoch": step < state.step, "final_loss": _clean(loss),
            "tokens": sum(label != -100 for label in example.labels[1:]),
        })
    (folder / "samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    log = {
        "complete": True, "identity": state.identity, "seed": seed, "seeds": seeds,
        "init_digest": state.init_digest,
        "base_model": str(run.base_model.resolve()), "data": str(run.data.resolve()), "config": asdict(run.config),
        "n_train": len(run.train), "n_eval": len(run.held), "steps": state.step,
        "steps_per_epoch": run.steps_per_epoch, "epochs": run.epochs, "device": str(run.device),
        "final_train_loss": _clean(mean_loss(losses, run.train)), "losses": state.losses,
        "eval_losses": state.eval_losses, "wall_time_s": round(state.wall_s, 3),
    }
    (folder / "train_log.json").write_text(json.dumps(log, indent=1))
    shutil.rmtree(folder / "checkpoint", ignore_errors=True)
