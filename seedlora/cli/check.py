"""`seedlora check`: would vLLM and PEFT load these adapters (or model folders) and compute the same update?"""

from __future__ import annotations

from ..errors import SeedLoraError

HELP = ("report every reason vLLM or PEFT would refuse or silently mis-scale an adapter, and the --max-lora-rank "
        "to serve it with; model folders (fused merges) are checked as models")


def add_arguments(parser) -> None:
    parser.add_argument("paths", nargs="+", metavar="FOLDER", help="PEFT adapter folders or model folders (or Hub ids org/name[@revision])")
    parser.add_argument("--base", metavar="BASE_DIR", help="base model folder: check adapters' module names and shapes against it")
    parser.add_argument("--strict", action="store_true", help="fail on warnings too (e.g. rank_pattern, rsLoRA)")


def run(args) -> None:
    failed = []
    for path in args.paths:
        if len(args.paths) > 1:
            print(f"== {path}")
        if check_one(path, args.base, args.strict):
            failed.append(path)
    if failed:
        adapters = [p for p in failed if not is_model(p)]
        fix = "fix them" + (" or re-merge the adapters with `seedlora merge ... --vllm`" if adapters else "")
        raise SeedLoraError(f"{', '.join(failed)}: problems found by `seedlora check` (listed above); {fix}")


def check_one(path: str, base, strict: bool) -> bool:
    """Print the findings for one folder; True if it has problems."""
    from ..serving import check_adapter
    from ..serving_model import check_model
    from ..sources.hub import resolve

    folder = resolve(path).path
    model = is_model(folder)
    report = check_model(folder) if model else check_adapter(folder, base=resolve(base, "model").path if base else None)
    for finding in report.findings:
        print(finding)
    problems = report.findings if strict else report.problems
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        print(f"model: would fail to load ({count})" if model else f"vLLM: would reject/mis-scale ({count})")
        return True
    print(f"model: OK, serve with `vllm serve {path}` (a full model: no LoRA options)" if model
          else f"vLLM: OK, serve with --max-lora-rank {report.max_lora_rank}")
    return False


def is_model(path) -> bool:
    from ..sources import is_model_folder

    return is_model_folder(path)
