"""`seedlora check`: would vLLM and PEFT load this adapter and compute the same update?"""

from __future__ import annotations

from ..errors import SeedLoraError

HELP = "report every reason vLLM or PEFT would refuse or silently mis-scale an adapter, and the --max-lora-rank to serve it with"


def add_arguments(parser) -> None:
    parser.add_argument("adapter", metavar="ADAPTER", help="PEFT adapter folder")
    parser.add_argument("--base", metavar="BASE_DIR", help="base model folder: check module names and shapes against it")
    parser.add_argument("--strict", action="store_true", help="fail on warnings too (e.g. rank_pattern, rsLoRA)")


def run(args) -> None:
    from ..serving import check_adapter

    report = check_adapter(args.adapter, base=args.base)
    for finding in report.findings:
        print(finding)
    problems = report.findings if args.strict else report.problems
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        print(f"vLLM: would reject/mis-scale ({count})")
        raise SeedLoraError(f"{args.adapter}: {count} found by `seedlora check` (listed above); fix them or re-merge with `seedlora merge ... --vllm`")
    print(f"vLLM: OK, serve with --max-lora-rank {report.max_lora_rank}")
