"""`seedlora train`: one LoRA adapter per seed on a local model and dataset (wraps train_adapters).

Settings start from a preset (`--preset papers`, the default, or `quick`); every flag given
overrides it. Under `torchrun --nproc_per_node N -m seedlora train ...` or
`accelerate launch -m seedlora train ...` it trains data-parallel (transformers' Trainer).
"""

from __future__ import annotations

import argparse

HELP = "train one LoRA adapter per seed (data order, init, or both varied) on a local model and dataset"


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data-format flags, shared with `python -m eval.evaluate` (same names, same meaning)."""
    data = parser.add_argument_group("data format (same flags in eval/evaluate.py)")
    data.add_argument("--prompt-field", default="prompt", help="prompt column (default prompt)")
    data.add_argument("--completion-field", default="completion", help="completion column; loss is on it only (default completion)")
    data.add_argument("--messages-field", default="messages", help="chat column: a list of {role, content} (default messages)")
    data.add_argument("--text-field", help="train on one text column instead (loss on every token)")
    data.add_argument("--chat-template", default="auto", metavar="auto|tokenizer|none|PATH",
                      help="auto (default): the tokenizer's chat template for messages data only; tokenizer: also for "
                           "prompt/completion rows (a user and an assistant turn); none; or a Jinja file (both kinds)")
    data.add_argument("--split", help="split of a dataset folder or name (default train)")
    data.add_argument("--max-length", type=int, default=512, help="max tokens per example; the prompt is cut from the left (default 512)")


def data_options(args) -> dict:
    """TrainConfig / DataFormat values of the data-format flags."""
    return dict(prompt_field=args.prompt_field, completion_field=args.completion_field, messages_field=args.messages_field,
                text_field=args.text_field, chat_template=args.chat_template, split=args.split, max_length=args.max_length)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..train.presets import PRESETS, describe

    parser.add_argument("--base", required=True, help="local base model folder (transformers format)")
    parser.add_argument("--data", required=True, help="training data: .jsonl/.csv/.parquet file, dataset folder, or datasets name")
    parser.add_argument("-o", "--output", required=True, help="output folder; adapters go to OUTPUT/seed-<s>/")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one adapter per seed (default 0 1 2)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="papers",
                        help="starting settings, any flag below overrides them; " + "; ".join(describe(n) for n in PRESETS))
    parser.add_argument("--vary", choices=("order", "init", "both", "fixed-batches"),
                        help="what the seed changes: data order, LoRA init, both, or only the order of fixed batches")
    parser.add_argument("--fixed-seed", type=int, default=0, help="seed of whatever --vary holds fixed, and of the eval split")
    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--rank", type=int, help="LoRA rank r")
    lora.add_argument("--alpha", type=float, help="LoRA alpha")
    lora.add_argument("--dropout", type=float, help="LoRA dropout")
    lora.add_argument("--targets", nargs="+", help="target modules, e.g. q_proj v_proj, or all-linear (default: PEFT's for the model)")
    optim = parser.add_argument_group("optimisation (defaults from --preset)")
    optim.add_argument("--lr", type=float, help="peak learning rate of AdamW")
    optim.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    optim.add_argument("--scheduler", choices=("linear", "cosine", "constant"), help="decay after warm-up")
    warm = optim.add_mutually_exclusive_group()
    warm.add_argument("--warmup-ratio", type=float, help="warm-up as a fraction of all steps")
    warm.add_argument("--warmup-steps", type=int, help="warm-up in optimizer steps")
    length = optim.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="epochs")
    length.add_argument("--max-steps", type=int, help="optimizer steps instead of epochs")
    optim.add_argument("--batch-size", type=int, help="micro-batch size per process")
    optim.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    optim.add_argument("--max-grad-norm", type=float, help="gradient clipping norm, 0 to disable")
    add_data_arguments(parser)
    parser.add_argument("--eval-split", help="held-out fraction (e.g. 0.1) or a separate eval file, scored each epoch")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--load-in-4bit", action="store_true", help="QLoRA: 4-bit base through bitsandbytes (CUDA only)")
    run_group.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="base weights dtype (default float32)")
    run_group.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no", help="autocast (fp16: CUDA only; default no)")
    run_group.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward (less memory)")
    run_group.add_argument("--no-deterministic", action="store_true", help="faster GPU kernels; reruns may then differ in the last bits")
    run_group.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto (default): CUDA if available")
    run_group.add_argument("--save-every-epoch", action="store_true", help="also keep the adapter of each epoch in seed-<s>/epoch-<e>/")
    run_group.add_argument("--save-steps", type=int, help="extra checkpoint every N optimizer steps (always one per epoch)")
    run_group.add_argument("--no-resume", action="store_true", help="do not continue an interrupted run (refuses existing seed folders)")
    run_group.add_argument("--overwrite", action="store_true", help="replace existing seed folders")
    run_group.add_argument("--log-every", type=int, default=10, help="without a terminal: one progress line every N steps (default 10)")
    run_group.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")


PRESET_FLAGS = ("vary", "rank", "alpha", "dropout", "lr", "weight_decay", "scheduler", "warmup_ratio", "warmup_steps",
                "epochs", "max_steps", "batch_size", "grad_accum", "max_grad_norm")


def options(args) -> dict:
    """TrainConfig fields from the parsed arguments (preset-controlled ones only when given)."""
    targets = args.targets
    if targets == ["all-linear"]:
        targets = "all-linear"  # PEFT's keyword; any other single name stays a list (a str is a regex)
    chosen = {name: getattr(args, name) for name in PRESET_FLAGS if getattr(args, name) is not None}
    if chosen.get("max_grad_norm") == 0:
        chosen["max_grad_norm"] = None
    return dict(
        preset=args.preset, fixed_seed=args.fixed_seed, target_modules=targets, eval_split=args.eval_split,
        load_in_4bit=args.load_in_4bit, dtype=args.dtype, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing, deterministic=not args.no_deterministic,
        device=args.device, save_every_epoch=args.save_every_epoch, save_steps=args.save_steps,
        **data_options(args), **chosen,
    )


def run(args) -> None:
    import json

    from accelerate import PartialState

    from ..train import train_adapters

    folders = train_adapters(args.base, args.data, args.output, args.seeds, resume=not args.no_resume,
                             overwrite=args.overwrite, progress=not args.quiet, log_every=args.log_every, **options(args))
    if args.quiet or not PartialState().is_main_process:
        return
    for folder in folders:
        log = json.loads((folder / "train_log.json").read_text())
        evals = log["eval_losses"]
        held = f", eval loss {evals[-1]['loss']:.4f}" if evals else ""
        print(f"{folder}: {log['steps']} steps ({log['preset'] or 'no'} preset), "
              f"train loss {log['final_train_loss']:.4f}{held}, {log['wall_time_s']:.0f} s")
