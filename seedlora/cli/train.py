"""`seedlora train`: one LoRA adapter per seed on a local model and dataset (wraps train_adapters)."""

from __future__ import annotations

import argparse
import os
import sys

HELP = "train one LoRA adapter per seed (data order, init, or both varied) on a local model and dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="local base model folder (transformers format)")
    parser.add_argument("--data", required=True, help="training file: .jsonl, .csv or .parquet")
    parser.add_argument("-o", "--output", required=True, help="output folder; adapters go to OUTPUT/seed-<s>/")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one adapter per seed (default 0 1 2)")
    parser.add_argument("--vary", choices=("order", "init", "both", "fixed-batches"), default="order",
                        help="what the seed changes: data order (default), LoRA init, both, or only the order of fixed batches")
    parser.add_argument("--fixed-seed", type=int, default=0, help="seed of whatever --vary holds fixed, and of the eval split")
    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--rank", type=int, default=8, help="LoRA rank r (default 8)")
    lora.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (default 16)")
    lora.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout (default 0)")
    lora.add_argument("--targets", nargs="+", help="target modules, e.g. q_proj v_proj, or all-linear (default: PEFT's for the model)")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--lr", type=float, default=2e-4, help="peak learning rate of AdamW (default 2e-4)")
    optim.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    optim.add_argument("--scheduler", choices=("linear", "cosine", "constant"), default="linear", help="decay after warm-up (default linear)")
    warm = optim.add_mutually_exclusive_group()
    warm.add_argument("--warmup-ratio", type=float, default=0.0, help="warm-up as a fraction of all steps (default 0)")
    warm.add_argument("--warmup-steps", type=int, help="warm-up in optimizer steps")
    length = optim.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, default=3, help="epochs (default 3)")
    length.add_argument("--max-steps", type=int, help="optimizer steps instead of epochs")
    optim.add_argument("--batch-size", type=int, default=8, help="micro-batch size (default 8)")
    optim.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    optim.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm, 0 to disable (default 1)")
    data = parser.add_argument_group("data")
    data.add_argument("--max-length", type=int, default=512, help="max tokens per example; the prompt is cut from the left (default 512)")
    data.add_argument("--eval-split", help="held-out fraction (e.g. 0.1) or a separate eval file")
    data.add_argument("--prompt-field", default="prompt", help="prompt column (default prompt)")
    data.add_argument("--completion-field", default="completion", help="completion column; loss is on it only (default completion)")
    data.add_argument("--text-field", help="train on one text column instead (loss on every token)")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--load-in-4bit", action="store_true", help="QLoRA: 4-bit base through bitsandbytes (CUDA only)")
    run_group.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="base model dtype (default float32)")
    run_group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    run_group.add_argument("--save-every-epoch", action="store_true", help="also keep the adapter of each epoch in seed-<s>/epoch-<e>/")
    run_group.add_argument("--save-steps", type=int, help="extra checkpoint every N optimizer steps (always one per epoch)")
    run_group.add_argument("--no-resume", action="store_true", help="do not continue an interrupted run (refuses existing seed folders)")
    run_group.add_argument("--overwrite", action="store_true", help="replace existing seed folders")
    run_group.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summary")


def options(args) -> dict:
    """TrainConfig fields from the parsed arguments."""
    targets = args.targets
    if targets == ["all-linear"]:
        targets = "all-linear"  # PEFT's keyword; any other single name stays a list (a str is a regex)
    return dict(
        vary=args.vary, fixed_seed=args.fixed_seed, rank=args.rank, alpha=args.alpha, dropout=args.dropout,
        target_modules=targets, lr=args.lr, weight_decay=args.weight_decay, scheduler=args.scheduler,
        warmup_ratio=args.warmup_ratio, warmup_steps=args.warmup_steps, epochs=args.epochs,
        max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
        max_grad_norm=args.max_grad_norm or None, max_length=args.max_length, eval_split=args.eval_split,
        prompt_field=args.prompt_field, completion_field=args.completion_field, text_field=args.text_field,
        load_in_4bit=args.load_in_4bit, dtype=args.dtype, device=args.device,
        save_every_epoch=args.save_every_epoch, save_steps=args.save_steps,
    )


def run(args) -> None:
    import json

    from ..train import train_adapters

    progress = not args.quiet and sys.stderr.isatty() and not os.environ.get("CI")
    folders = train_adapters(
        args.base, args.data, args.output, args.seeds, resume=not args.no_resume,
        overwrite=args.overwrite, progress=progress, **options(args),
    )
    if args.quiet:
        return
    for folder in folders:
        log = json.loads((folder / "train_log.json").read_text())
        evals = log["eval_losses"]
        held = f", eval loss {evals[-1]['loss']:.4f}" if evals else ""
        print(f"{folder}: {log['steps']} steps, train loss {log['final_train_loss']:.4f}{held}, {log['wall_time_s']:.0f} s")
