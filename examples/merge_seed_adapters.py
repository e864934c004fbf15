"""Recipe: merge seed adapters with the Python API, three ways, and compare what you get.

    python examples/merge_seed_adapters.py adapters/seed-* -o /tmp/merged

1. `merge_adapters` folder → folder with SeedLoRA (exact rank Σr+1) and linear (exact rank Σr);
2. the same linear merge compressed to rank 8, reporting the energy kept;
3. the per-module cosine similarity of the inputs (how different the seeds really are).
With `--base MODEL_DIR` it also loads the adapters into a PeftModel and merges them there
with `merge_peft_adapters` (the correct replacement for add_weighted_adapter).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from seedlora import LoraAdapter, merge_adapters, merge_peft_adapters
from seedlora.analysis.inspect import pairwise_cosine


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("adapters", nargs="+")
    parser.add_argument("-o", "--output", required=True, help="folder for the merged adapters")
    parser.add_argument("--base", help="base model folder, for the in-PeftModel merge")
    args = parser.parse_args(argv)
    out = Path(args.output)

    results = {}
    for method, rank in (("seedlora", None), ("linear", None), ("linear", 8)):
        name = f"{method}-r{rank}" if rank else method
        report = merge_adapters(args.adapters, out / name, method=method, rank=rank, overwrite=True)
        results[name] = report
        print(f"{name:12s} rank {report.rank:3d}  energy kept {report.energy_kept:.4f}")

    opened = [LoraAdapter.open(a) for a in args.adapters]
    table = pairwise_cosine(opened, list(opened[0].modules))
    mean_cos = sum(m[0][1] for m in table.values()) / len(table)
    print(f"mean cosine similarity of the first two adapters' updates: {mean_cos:+.4f}")

    if args.base:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(args.base), args.adapters[0], adapter_name="s0")
        for i, folder in enumerate(args.adapters[1:], 1):
            model.load_adapter(folder, adapter_name=f"s{i}")
        names = [f"s{i}" for i in range(len(args.adapters))]
        report = merge_peft_adapters(model, names, "merged", method="seedlora")
        model.set_adapter("merged")
        print(f"in-model seedlora merge: adapter 'merged' of rank {report.rank} is active")
        results["in_model"] = report
    return results


if __name__ == "__main__":
    main()
