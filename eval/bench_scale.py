"""Benchmark (issue 11): dense merges at the scale people fine-tune, side by side in one run.

Three parts, every route a whole process (start to exit; peak RSS from os.wait4), K = 3 random
rank-8 float32 adapters on all seven linear modules (eval/scale/inputs.py):
  adapter7b  all 32 layers of Llama-2-7B shape, adapter output: seedlora ties (ρ 0.2) / dare_ties
             (ρ 0.5) / selection at --rank 64, linear exact, seedlora exact, linear --rank 16;
             floors: read the inputs + write an output of the same size, and materialise-and-sum
             (read, form the K dense float32 updates of every module, sum them).
  fused7b    2 layers of 7B shape with a bf16 base (1 shard, 1.33 GB): seedlora ties / dare_ties /
             selection / linear --fuse; mergekit ties / dare_ties / linear on the K fused full models
             (made beforehand by seedlora, not timed); the disk copy of the base; and on 1 layer
             PEFT add_weighted_adapter ties_svd (rank 64, ρ 0.2) next to seedlora ties --rank 64.
  layer70b   1 layer of Llama-2-70B shape (8192 / 28672, GQA): seedlora ties / dare_ties / selection
             --rank 64 and ties --fuse, mergekit ties, the floors; per layer, to extrapolate x 80.
Relative errors ‖Y − τ‖/‖τ‖ against float64 references (eval/scale/reference.py) on two modules
of layer 0 per part. Targets of the issue are checked at the end (PASS/FAIL lines).

    nice -n 10 python -m eval.bench_scale [--parts adapter7b,fused7b,layer70b] [--threads N] [--work DIR]
                                          [--repeats N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
from pathlib import Path

from eval.scale import inputs as data
from eval.scale import reference as ref
from eval.scale.measure import run_measured, seedlora_command, seedlora_env, worker_command
from eval.scale.mergekit import mergekit_command, mergekit_env, mergekit_venv, write_config

DENSITY = {"ties": 0.2, "dare_ties": 0.5, "dare_linear": 0.5}
ERROR_MODULES = {"adapter7b": ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"),
                 "fused7b": ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"),
                 "layer70b": ("model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj")}
PARTS = ("adapter7b", "fused7b", "layer70b")


def method_args(method: str) -> list:
    return ["--density", DENSITY[method]] if method in DENSITY else []


class Part:
    """The routes of one part: run, remember (label -> result), then errors and the table."""

    def __init__(self, name: str, preset: str, layers: int, work: Path, threads, log, device: str = "cpu"):
        self.name, self.preset, self.layers, self.threads, self.log = name, preset, layers, threads, log
        self.device = device  # where the seedlora routes compute (--device); floors, PEFT and mergekit stay as they are
        self.work, self.rows = work / name, {}
        self.adapters = data.write_adapters(work / f"adapters-{preset}-{layers}", preset, layers)
        self.base = None

    def route(self, label: str, command: list, floor=None, kind=None, method=None, out=None, env=None,
              layers=None, extra_disk=()) -> dict:
        log_file = self.work / "logs" / f"{label.replace(' ', '_').replace('/', '_')}.log"
        if out is not None and Path(out).exists():
            shutil.rmtree(out)
        result = run_measured(command, log_file, env=env or seedlora_env(self.threads))
        inputs = self.adapters + ([self.base] if self.base and kind == "fused" else []) + list(extra_disk)
        result.update(label=label, floor=floor, kind=kind, method=method, out=str(out) if out else None,
                      layers=layers or self.layers,
                      disk_gb=(data.disk_bytes(*inputs) + (data.disk_bytes(out) if out else 0)) / 1e9)
        self.log(f"  {label}: {result['seconds']:.2f} s, peak {result['peak_gb']:.2f} GB")
        earlier = self.rows.get(label)
        if earlier is not None:  # a repeated route: its median run, its highest peak
            runs = earlier["runs"] + [result["seconds"]]
            result.update(runs=runs, seconds=statistics.median(runs), peak_gb=max(earlier["peak_gb"], result["peak_gb"]))
        else:
            result["runs"] = [result["seconds"]]
        self.rows[label] = result
        return result

    def seedlora(self, label, method, *args, floor=None, kind="adapter", adapters=None, layers=None):
        out = self.work / "out" / label.replace(" ", "_")
        command = seedlora_command("merge", *(adapters or self.adapters), "-m", method, *method_args(method), *args,
                                   "--device", self.device, "-o", out, "-q", "--overwrite")
        return self.route(label, command, floor, kind, method, out, layers=layers)

    def worker(self, label, name, spec, layers=None):
        out = self.work / "out" / label.replace(" ", "_")
        if out.exists():
            shutil.rmtree(out)
        return self.route(label, worker_command(name, {**spec, "threads": self.threads}, out), layers=layers)


def run_adapter7b(part: Part) -> None:
    scale = {"scale": 2.0}
    part.worker("floor: read+write r64", "read_write", {"adapters": list(map(str, part.adapters)), "rank": 64})
    part.worker("floor: materialise+sum", "materialise", {"adapters": list(map(str, part.adapters)), **scale})
    for method in ("ties", "dare_ties", "selection"):
        part.seedlora(f"seedlora {method} --rank 64", method, "--rank", 64, floor="floor: materialise+sum")
    for rank in (24, 25, 16):
        part.worker(f"floor: read+write r{rank}", "read_write", {"adapters": list(map(str, part.adapters)), "rank": rank})
    part.seedlora("seedlora linear (exact r24)", "linear", floor="floor: read+write r24")
    part.seedlora("seedlora seedlora (exact r25)", "seedlora", floor="floor: read+write r25")
    part.seedlora("seedlora linear --rank 16", "linear", "--rank", 16, floor="floor: read+write r16")


def run_fused(part: Part, methods: tuple, mergekit_methods: tuple, repeats: int = 1) -> None:
    """seedlora --fuse routes, the disk copy of the base, and mergekit on the K fused models.

    The copy and the seedlora routes take seconds and a busy disk moves them a lot: they run
    `repeats` times, interleaved (copy, each method, copy, ...), and the table shows each one's median.
    """
    part.base = data.write_base(part.work.parent / f"base-{part.preset}-{part.layers}", part.preset, part.layers)
    for _ in range(repeats):
        part.worker("floor: copy base", "copy", {"base": str(part.base)})
        for method in methods:
            part.seedlora(f"seedlora {method} --fuse", method, "--base", part.base, "--fuse", floor="floor: copy base",
                          kind="fused")
    if not mergekit_methods:
        return
    cli, versions = mergekit_venv()
    part.mergekit_versions = versions
    fused = data.fuse_each(part.work.parent / f"fused-{part.preset}-{part.layers}", part.base, part.adapters)
    for method in mergekit_methods:
        out = part.work / "out" / f"mergekit_{method}"
        config = write_config(part.work / f"mergekit_{method}.yml", method, part.base, fused, DENSITY.get(method, 1.0))
        part.route(f"mergekit {method} (K fused)", mergekit_command(cli, config, out, part.threads),
                   floor="floor: copy base", kind="fused", method=method, out=out, env=mergekit_env(part.threads),
                   extra_disk=fused)


def run_peft(part: Part) -> None:
    """PEFT ties_svd next to seedlora ties --rank 64 on the same 1-layer inputs."""
    ones = data.write_adapters(part.work.parent / f"adapters-{part.preset}-1", part.preset, 1)
    p = data.PRESETS[part.preset]
    spec = {"adapters": list(map(str, ones)), "layers": 1, "rank": 64, "density": DENSITY["ties"],
            "dims": {"vocab": 1024, "hidden": p["hidden"], "intermediate": p["intermediate"], "heads": p["heads"]}}
    part.worker("floor: materialise+sum (1 layer)", "materialise", {"adapters": spec["adapters"], "scale": 2.0}, layers=1)
    part.seedlora("seedlora ties --rank 64 (1 layer)", "ties", "--rank", 64, adapters=ones, layers=1,
                  floor="floor: materialise+sum (1 layer)")
    row = part.worker("PEFT ties_svd r64 (1 layer)", "peft", spec, layers=1)
    row.update(kind="adapter", method="ties", out=row["inner"]["adapter_dir"], floor="floor: materialise+sum (1 layer)")
    part.peft_adapters = ones


def add_errors(part: Part) -> None:
    """Relative error of every output against the float64 reference, on the part's error modules."""
    cache, modules = {}, ERROR_MODULES[part.name]
    for row in part.rows.values():
        if not row.get("out") or not row.get("method"):
            continue
        adapters = part.peft_adapters if "(1 layer)" in row["label"] else part.adapters
        pairs, floor = [], []
        for name in modules:
            key = (row["method"], name, "(1 layer)" in row["label"])
            if key not in cache:
                cache[key] = ref.reference(row["method"], adapters, name, density=DENSITY.get(row["method"], 0.2))
            target = cache[key]
            if row["kind"] == "fused":
                pairs.append(ref.error_pair(ref.fused_update(Path(row["out"]), part.base, name), target))
                floor.append(ref.bf16_floor(part.base, name, target))
            else:
                pairs.append(ref.error_pair(ref.adapter_update(Path(row["out"]), name), target))
        row["rel_err"] = ref.relative(pairs)
        if floor:
            row["bf16_floor"] = ref.relative(floor)


def table(part: Part, per: int) -> list:
    lines = [f"-- {part.name}: {part.preset}-shaped, {part.layers} layer(s); per-layer times x {per} = whole model",
             f"{'route':<38} {'wall s':>8} {'s/layer':>8} {'x' + str(per) + ' s':>8} {'x floor':>8} {'peak GB':>8} "
             f"{'disk GB':>8} {'rel.err':>9}"]
    for label, row in part.rows.items():
        floor = part.rows.get(row.get("floor") or "", {})
        ratio = f"{row['seconds'] / floor['seconds']:.2f}" if floor else "—"
        per_layer = row["seconds"] / row["layers"]
        err = f"{row['rel_err']:.3e}" if "rel_err" in row else "—"
        lines.append(f"{label:<38} {row['seconds']:>8.2f} {per_layer:>8.2f} {per_layer * per:>8.0f} {ratio:>8} "
                     f"{row['peak_gb']:>8.2f} {row['disk_gb']:>8.2f} {err:>9}")
        if len(row.get("runs", ())) > 1:
            lines[-1] += f"  (median of {len(row['runs'])}: {', '.join(f'{t:.2f}' for t in row['runs'])} s)"
        if "bf16_floor" in row:
            lines[-1] += f"  (bf16 floor {row['bf16_floor']:.3e})"
        if "inner" in row and "load_seconds" in row["inner"]:
            lines[-1] += f"  (model load {row['inner']['load_seconds']:.1f} s, not counted)"
    return lines


def header(threads, device: str = "cpu") -> str:
    import torch

    load = os.getloadavg()
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.startswith("cuda") and torch.cuda.is_available() else ""
    return (f"bench_scale {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPU(s); "
            f"python {platform.python_version()}, torch {torch.__version__}; seedlora --device {device}{gpu}; "
            f"threads {threads or 'torch default'}; "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE (set per process)')}; "
            f"load average at start {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "seedlora" / "bench_scale")
    parser.add_argument("--threads", type=int, help="threads per process (default: torch's)")
    parser.add_argument("--layers-7b", type=int, default=32, help="layers of the adapter7b part (default all 32)")
    parser.add_argument("--preset-7b", default="7b", choices=("7b", "tiny"), help="tiny: a test-sized stand-in")
    parser.add_argument("--preset-70b", default="70b", choices=("70b", "tiny-gqa"), help="tiny-gqa: a test-sized stand-in")
    parser.add_argument("--no-mergekit", action="store_true", help="skip the mergekit routes")
    parser.add_argument("--device", default="cpu", help="--device of the seedlora routes (cuda: the GPU run issue 11 asks for)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved runs of the base copy and the seedlora --fuse routes (median shown; default 3)")
    parser.add_argument("--out-json", type=Path)
    args = parser.parse_args(argv)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    print(header(args.threads, args.device), flush=True)
    parts = {}
    for name in args.parts.split(","):
        log(f"part {name}")
        mergekit = () if args.no_mergekit else None
        if name == "adapter7b":
            part = Part(name, args.preset_7b, args.layers_7b, args.work, args.threads, log, args.device)
            run_adapter7b(part)
        elif name == "fused7b":
            part = Part(name, args.preset_7b, 2, args.work, args.threads, log, args.device)
            run_fused(part, ("ties", "dare_ties", "selection", "linear"),
                      ("ties", "dare_ties", "linear") if mergekit is None else mergekit, args.repeats)
            run_peft(part)
        else:
            part = Part(name, args.preset_70b, 1, args.work, args.threads, log, args.device)
            run_adapter7b_like_70b(part)
            run_fused(part, ("ties",), ("ties",) if mergekit is None else mergekit, args.repeats)
        add_errors(part)
        parts[name] = part
        print("\n".join(table(part, data.PRESETS[part.preset]["layers"])), flush=True)
    from eval.scale.targets import check_targets

    verdicts = check_targets(parts)
    print("\n".join(verdicts))
    if args.out_json:
        record = {name: p.rows for name, p in parts.items()}
        args.out_json.write_text(json.dumps({"header": header(args.threads, args.device), "parts": record, "targets": verdicts},
                                            indent=1, default=str) + "\n")
    return 0


def run_adapter7b_like_70b(part: Part) -> None:
    part.worker("floor: read+write r64", "read_write", {"adapters": list(map(str, part.adapters)), "rank": 64})
    part.worker("floor: materialise+sum", "materialise", {"adapters": list(map(str, part.adapters)), "scale": 2.0})
    for method in ("ties", "dare_ties", "selection"):
        part.seedlora(f"seedlora {method} --rank 64", method, "--rank", 64, floor="floor: materialise+sum")


if __name__ == "__main__":
    sys.exit(main())
