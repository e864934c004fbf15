"""transformers' Trainer, told our data order and asked to keep each sample's loss.

Everything else is the Trainer's: AdamW, the warm-up + decay schedule, gradient accumulation,
clipping, checkpoints and `resume_from_checkpoint`, `full_determinism`, gradient
checkpointing, bf16/fp16 autocast, and multi-process training when started by `torchrun` or
`accelerate launch` (DDP; on CPU with the gloo backend). Two things are ours:

- the sampler: `PlannedSampler` (seedlora/train/batches.py) yields the epoch plan of
  `data_seed`, so `--vary` controls the order exactly and the first-epoch position of every
  row is known;
- the loss: computed here from the step's logits as the sum over the step's scored tokens
  divided by their number across the whole accumulated (and all-process) batch, which is what
  the Trainer's own loss does, plus each row's loss handed to `SampleLosses`.
"""

from __future__ import annotations

from pathlib import Path

from transformers import Trainer, TrainingArguments

from .batches import PlannedSampler, token_losses


class SeedTrainer(Trainer):
    """Trainer with the planned sampler and per-sample loss recording."""

    loss_is_scaled_for_ga = True  # compute_loss divides by the accumulated batch's token count

    def __init__(self, *args, plan: dict, recorder, **kwargs):
        super().__init__(*args, **kwargs)
        self.plan, self.recorder = plan, recorder
        self.model_accepts_loss_kwargs = True  # makes the Trainer count the batch's tokens for us

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return PlannedSampler(len(dataset), self.plan["global_batch"], self.plan["order"], self.plan["compose"])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        index, labels = inputs.pop("index"), inputs.pop("labels")
        outputs = model(**inputs, use_cache=False)
        total, count = token_losses(outputs.logits, labels)
        if model.training:
            self.recorder.add(index, total.detach(), count, self.state.global_step + 1)
        if num_items_in_batch is None:  # evaluation: this batch's mean
            loss = total.sum() / count.sum().clamp(min=1)
        else:  # DDP averages gradients over processes: undo it, the denominator is already global
            loss = total.sum() / num_items_in_batch * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss


def training_arguments(folder: Path, config, seeds: dict, device: str, has_eval: bool) -> TrainingArguments:
    """TrainingArguments for one seed: checkpoints in folder/checkpoints, seeds per `run_seeds`."""
    warmup = config.warmup_steps if config.warmup_steps is not None else config.warmup_ratio
    return TrainingArguments(
        output_dir=str(folder / "checkpoints"),
        seed=seeds["init"], data_seed=seeds["order"], full_determinism=config.deterministic,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        num_train_epochs=config.epochs, max_steps=config.max_steps or -1,
        learning_rate=config.lr, weight_decay=config.weight_decay, optim="adamw_torch",
        lr_scheduler_type="constant_with_warmup" if config.scheduler == "constant" else config.scheduler,
        warmup_steps=warmup, max_grad_norm=config.max_grad_norm or 0.0,
        bf16=config.mixed_precision == "bf16", fp16=config.mixed_precision == "fp16",
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        use_cpu=device == "cpu",
        logging_strategy="steps", logging_steps=1, report_to="none", disable_tqdm=True,
        eval_strategy="epoch" if has_eval else "no", prediction_loss_only=True,
        save_strategy="steps", save_steps=config.save_steps or 10**9, save_total_limit=1,
        remove_unused_columns=False, label_names=["labels"], dataloader_pin_memory=False,
        ddp_find_unused_parameters=False,
    )
