"""Speed benchmark: seedlora merges vs PEFT add_weighted_adapter on Llama-2-7B-shaped adapters.

K random rank-r LoRA adapters on all seven linear modules of N layers of the 7B shape (hidden
4096, intermediate 11008) are written to disk as PEFT adapter folders. Each measurement runs in
its own process forked from a forkserver that has imported torch, transformers, PEFT and
seedlora once, so peak RSS (ru_maxrss) is clean; an import-only process gives the baseline
subtracted from it. Repeats are interleaved; the median is reported, per layer. PEFT needs the
base model in memory: its load is timed apart, only add_weighted_adapter + save_pretrained count.
PEFT svd (dense SVD of every out x in delta) is slow, so it runs once, on --svd-layers layers.
Errors are ‖Y − τ‖/‖τ‖ against the exact target, in float64 from the input factors. Workers
use 1 torch thread by default (--threads): on a busy 2-core machine each small multi-threaded
BLAS call can stall for tens of ms at an OpenMP barrier, which would swamp the fast methods.
Wall time decides the targets; each process's CPU time is shown too, being robust to contention.

    python eval/bench_merge.py [--layers 2] [--k 3] [--rank 8] [--repeats 5] [--out-json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

PREFIX = "base_model.model."
SHAPES = {"self_attn.q_proj": "hh", "self_attn.k_proj": "hh", "self_attn.v_proj": "hh",
          "self_attn.o_proj": "hh", "mlp.gate_proj": "ih", "mlp.up_proj": "ih", "mlp.down_proj": "hi"}
PRELOAD = ["torch", "safetensors.torch", "transformers", "transformers.models.llama.modeling_llama",
           "peft", "peft.tuners.lora", "seedlora.api", "seedlora.sinks.adapter_folder"]
# key: (label, timed in every round, exact target of its output: "avg"/"seedlora"/None, job)
METHODS = {
    "floor": ("read+write floor", True, None, ("floor",)),
    "linear": ("seedlora linear (r{kr})", True, "avg", ("seedlora", "linear", False)),
    "seedlora": ("seedlora seedlora (r{kr1})", True, "seedlora", ("seedlora", "seedlora", False)),
    "linear_trunc": ("seedlora linear --rank {t}", True, "avg", ("seedlora", "linear", True)),
    "peft_cat": ("PEFT cat (r{kr})", True, "avg", ("peft", "cat", True)),
    "peft_svd": ("PEFT svd r{t} (default)", False, "avg", ("peft", "svd", True)),
    "peft_svd_thin": ("PEFT svd r{t} full_matrices=False", False, "avg", ("peft", "svd", False)),
}


# ---------------------------------------------------------------- inputs
def module_shapes(hidden: int, intermediate: int, layers: int) -> dict:
    """out x in of each adapted module, keyed by its name in the Llama model."""
    size = {"h": hidden, "i": intermediate}
    return {f"model.layers.{l}.{m}": (size[s[0]], size[s[1]]) for l in range(layers) for m, s in SHAPES.items()}


def random_factors(shapes: dict, k: int, rank: int, seed: int, dtype) -> list:
    """K adapters' (A, B) per module: A ~ N(0, 1/in), B ~ N(0, 0.02²), stored in `dtype`."""
    import torch

    adapters = []
    for i in range(k):
        gen = torch.Generator().manual_seed(seed + i)
        adapters.append({name: (torch.randn(rank, n_in, generator=gen).div_(math.sqrt(n_in)).to(dtype),
                                torch.randn(n_out, rank, generator=gen).mul_(0.02).to(dtype))
                         for name, (n_out, n_in) in shapes.items()})
    return adapters


def write_adapter(folder: Path, factors: dict, rank: int, alpha: float) -> Path:
    """A PEFT adapter folder: adapter_config.json as PEFT writes it + PEFT-named safetensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
              "target_modules": sorted(m.split(".")[1] for m in SHAPES), "lora_dropout": 0.0,
              "bias": "none", "use_rslora": False, "fan_in_fan_out": False, "inference_mode": True,
              "base_model_name_or_path": None, "rank_pattern": {}, "alpha_pattern": {}}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    state = {}
    for name, (A, B) in factors.items():
        state[f"{PREFIX}{name}.lora_A.weight"] = A.contiguous()
        state[f"{PREFIX}{name}.lora_B.weight"] = B.contiguous()
    save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    return folder


# ---------------------------------------------------------------- workers (one process each)
def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _clock() -> tuple:
    return time.perf_counter(), time.process_time()


def _since(start: tuple) -> dict:
    """Wall seconds (what the targets use) and this process's CPU seconds (robust to contention)."""
    now = _clock()
    return {"seconds": now[0] - start[0], "cpu_seconds": now[1] - start[1]}


def work_floor(spec: dict, out: Path) -> dict:
    """Read all K adapters' tensors, write one rank-Σr file of the linear output's size."""
    import torch
    from safetensors.torch import load_file, save_file

    started = _clock()
    states = [load_file(str(Path(a) / "adapter_model.safetensors")) for a in spec["adapters"]]
    state = {}
    for key in states[0]:
        state[key] = torch.cat([s[key] for s in states], dim=0 if ".lora_A." in key else 1)
    out.mkdir()
    save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return {**_since(started), "adapter_dir": None}


def work_seedlora(spec: dict, out: Path, method: str, rank) -> dict:
    """merge_adapters end to end: open, read, merge, (truncate), write the folder."""
    from seedlora import merge_adapters

    started = _clock()
    merge_adapters(spec["adapters"], out, method=method, rank=rank)
    return {**_since(started), "adapter_dir": str(out)}


def load_peft_model(spec: dict, adapters: list, layers: int):
    """Base Llama of the 7B shape (meta → empty → zeros, all pages resident) + K adapters."""
    import torch
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM

    d = spec["dims"]
    config = LlamaConfig(vocab_size=d["vocab"], hidden_size=d["hidden"], intermediate_size=d["intermediate"],
                         num_hidden_layers=layers,
                         num_attention_heads=d["heads"], num_key_value_heads=d["heads"], tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            tensor.zero_()  # merging never reads base weights; zeros make their pages resident
    model = PeftModel.from_pretrained(model, adapters[0], adapter_name="a0")
    for i, folder in enumerate(adapters[1:], start=1):
        model.load_adapter(folder, adapter_name=f"a{i}")
    return model


def work_peft(spec: dict, out: Path, combination: str, full_matrices: bool = True) -> dict:
    """PEFT add_weighted_adapter + save_pretrained (timed); model load timed separately."""
    svd = combination == "svd"
    adapters = spec["svd_adapters"] if svd else spec["adapters"]
    started = time.perf_counter()
    model = load_peft_model(spec, adapters, spec["svd_layers"] if svd else spec["layers"])
    load_seconds, load_mb, loaded = time.perf_counter() - started, _peak_mb(), _clock()
    k = len(adapters)
    extra = {"svd_rank": spec["trunc_rank"], "svd_full_matrices": full_matrices} if svd else {}
    model.add_weighted_adapter([f"a{i}" for i in range(k)], [1.0 / k] * k, "merged",
                               combination_type=combination, **extra)
    model.save_pretrained(str(out), selected_adapters=["merged"])
    return {**_since(loaded), "load_seconds": load_seconds, "load_peak_mb": load_mb,
            "adapter_dir": str(out / "merged")}


def run_worker(name: str, spec: dict, out: str, result_file: str) -> None:
    """Entry point of one measurement process: do the work, write seconds + peak RSS as JSON."""
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    out, job = Path(out), METHODS[name][3] if name in METHODS else ("imports",)
    if job[0] == "floor":
        result = work_floor(spec, out)
    elif job[0] == "seedlora":
        result = work_seedlora(spec, out, job[1], spec["trunc_rank"] if job[2] else None)
    elif job[0] == "peft":
        result = work_peft(spec, out, job[1], job[2])
    else:  # imports only: the baseline
        result = {"seconds": 0.0, "cpu_seconds": 0.0, "adapter_dir": None}
    result["peak_mb"] = _peak_mb()
    Path(result_file).write_text(json.dumps(result))


def measure(ctx, name: str, spec: dict, out: Path) -> dict:
    """Run one worker in a fresh forked process and return its result."""
    result_file = out.parent / f"{out.name}.json"
    proc = ctx.Process(target=run_worker, args=(name, spec, str(out), str(result_file)))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"benchmark worker {name} failed with exit code {proc.exitcode}")
    return json.loads(result_file.read_text())


# ---------------------------------------------------------------- accuracy (float64, from inputs)
def read_output(folder: str) -> dict:
    """A written adapter's per-module (A, B·scale) in float64."""
    from safetensors.torch import load_file

    config = json.loads((Path(folder) / "adapter_config.json").read_text())
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError(f"{folder}: rank/alpha patterns are not handled by this benchmark")
    r = config["r"]
    scale = config["lora_alpha"] / (math.sqrt(r) if config.get("use_rslora") else r)
    state = load_file(str(Path(folder) / "adapter_model.safetensors"))
    suffix = ".lora_A.weight"
    return {key[len(PREFIX):-len(suffix)]: (state[key].double(),
                                            state[key[:-len(suffix)] + ".lora_B.weight"].double() * scale)
            for key in state if key.endswith(suffix)}


def _blocks(inputs: list, rows: int):
    """Row blocks of every input's dense delta τ_i = s_i B_i A_i and of τ_avg, in float64."""
    for start in range(0, inputs[0][1].shape[0], rows):
        deltas = [B[start:start + rows] @ A for A, B in inputs]
        yield start, deltas, sum(deltas) / len(deltas)


def module_errors(inputs: list, outputs: dict, rows: int = 1024) -> dict:
    """label -> (‖Y − target‖², ‖target‖²) for one module; targets τ_avg or SeedLoRA's τ_m."""
    k, n = len(inputs), inputs[0][1].shape[0] * inputs[0][0].shape[1]
    sums, sqs, avg_sum, avg_sq = [0.0] * k, [0.0] * k, 0.0, 0.0
    for _, deltas, avg in _blocks(inputs, rows):  # pass 1: the statistics SeedLoRA matches
        for i, d in enumerate(deltas):
            sums[i] += float(d.sum())
            sqs[i] += float(d.square().sum())
        avg_sum, avg_sq = avg_sum + float(avg.sum()), avg_sq + float(avg.square().sum())
    std = lambda s, q: math.sqrt(max(q / n - (s / n) ** 2, 0.0))
    a = (sum(std(s, q) for s, q in zip(sums, sqs)) / k) / std(avg_sum, avg_sq)
    c = sum(sums) / (k * n) - a * avg_sum / n
    found = {label: [0.0, 0.0] for label in outputs}
    for start, _, avg in _blocks(inputs, rows):  # pass 2: errors against the exact targets
        targets = {"avg": avg, "seedlora": avg * a + c}
        for label, (A, B, kind) in outputs.items():
            target = targets[kind]
            found[label][0] += float((B[start:start + rows] @ A - target).square().sum())
            found[label][1] += float(target.square().sum())
    return found


def accuracy(factors: list, dirs: dict, svd_modules: set) -> dict:
    """Overall relative error per output, plus linear_trunc restricted to the svd modules."""
    import torch

    written = {label: read_output(folder) for label, folder in dirs.items()}
    totals = {label: [0.0, 0.0] for label in list(dirs) + ["linear_trunc@svd"]}
    for name in factors[0]:
        scale = 2.0  # inputs are written with lora_alpha = 2r
        inputs = [(f[name][0].to(torch.float64), f[name][1].to(torch.float64) * scale) for f in factors]
        outputs = {label: (*w[name], METHODS[label][2]) for label, w in written.items() if name in w}
        for label, (err, norm) in module_errors(inputs, outputs).items():
            for key in [label] + (["linear_trunc@svd"] if label == "linear_trunc" and name in svd_modules else []):
                totals[key][0] += err
                totals[key][1] += norm
    return {label: math.sqrt(e / n) if n else None for label, (e, n) in totals.items()}


# ---------------------------------------------------------------- driver
def run_all(ctx, spec: dict, work: Path, repeats: int, log) -> dict:
    """Interleaved repeats: every method once per round; the slow PEFT svd runs only in round 0."""
    samples = {name: [] for name in ["imports", *METHODS]}
    for rep in range(repeats):
        for name in samples:
            if name in METHODS and not METHODS[name][1] and rep > 0:
                continue
            out = work / "out" / f"{name}-{rep}"
            out.parent.mkdir(parents=True, exist_ok=True)
            result = measure(ctx, name, spec, out)
            log(f"round {rep + 1}/{repeats} {name}: {result['seconds']:.3f} s (cpu {result['cpu_seconds']:.3f} s), "
                f"peak {result['peak_mb']:.0f} MB")
            samples[name].append(result)
            if rep > 0:
                shutil.rmtree(out, ignore_errors=True)  # round 0's outputs are kept for the errors
    return samples


def summarize(samples: dict, layers: int, svd_layers: int) -> dict:
    """Per method: median seconds per layer, peak MB above the import-only baseline."""
    base = statistics.median(r["peak_mb"] for r in samples["imports"])
    rows = {}
    for name in METHODS:
        runs, per = samples[name], svd_layers if name.startswith("peft_svd") else layers
        row = {"seconds_per_layer": statistics.median(r["seconds"] for r in runs) / per,
               "cpu_seconds_per_layer": statistics.median(r["cpu_seconds"] for r in runs) / per,
               "seconds": [r["seconds"] for r in runs], "cpu_seconds": [r["cpu_seconds"] for r in runs],
               "layers": per,
               "peak_mb": statistics.median(r["peak_mb"] for r in runs) - base}
        if "load_seconds" in runs[0]:
            row["load_seconds_per_layer"] = statistics.median(r["load_seconds"] for r in runs) / per
            row["model_mb"] = statistics.median(r["load_peak_mb"] for r in runs) - base
        rows[name] = row
    rows["imports_baseline_mb"] = base
    return rows


def check_targets(rows: dict, errors: dict, rtol: float = 1e-6) -> list:
    """(passed, text) for each of the issue's targets; decided on wall time, CPU-time ratios shown too."""
    svds = ("peft_svd", "peft_svd_thin")

    def ratios(pairs, limit, at_most=True) -> tuple:
        wall = {m: rows[m]["seconds_per_layer"] / rows[ref]["seconds_per_layer"] for m, ref in pairs}
        cpu = {m: rows[m]["cpu_seconds_per_layer"] / rows[ref]["cpu_seconds_per_layer"] for m, ref in pairs}
        ok = all(v <= limit if at_most else v >= limit for v in wall.values())
        show = lambda d: ", ".join(f"{m} {v:.2f}x" for m, v in d.items())
        return ok, f"{show(wall)} (CPU time: {show(cpu)})"

    exact = ratios([(m, "peft_cat") for m in ("linear", "seedlora")], 1.5)
    speed = ratios([(m, "linear_trunc") for m in svds], 100, at_most=False)
    floor = ratios([(m, "floor") for m in ("linear", "seedlora", "linear_trunc")], 3)
    acc = {m: (errors["linear_trunc@svd"], errors[m]) for m in svds}
    return [
        (exact[0], f"exact merges within 1.5x of PEFT cat: {exact[1]}"),
        (all(ours <= theirs * (1 + rtol) for ours, theirs in acc.values()),
         "truncated at least as accurate as PEFT svd: "
         + ", ".join(f"ours {o:.6e} vs {m} {p:.6e}" for m, (o, p) in acc.items())),
        (speed[0], f"truncated >= 100x faster than PEFT svd: {speed[1]}"),
        (floor[0], f"total time within 3x of read+write floor: {floor[1]}"),
    ]


def format_report(rows: dict, errors: dict, checks: list, labels: dict, header: str) -> str:
    """The table, the notes on PEFT's model load, then PASS/FAIL per target."""
    cat, floor = rows["peft_cat"]["seconds_per_layer"], rows["floor"]["seconds_per_layer"]
    lines = [header, f"{'method':34} {'s/layer':>9} {'cpu s/l':>9} {'x cat':>8} {'x floor':>8} {'peak MB':>8} "
                     f"{'rel.err':>9} {'runs':>4}"]
    for name in METHODS:
        row, err = rows[name], errors.get(name)
        s = row["seconds_per_layer"]
        lines.append(f"{labels[name]:34} {s:9.4f} {row['cpu_seconds_per_layer']:9.4f} {s / cat:8.2f} {s / floor:8.2f} "
                     f"{row['peak_mb']:8.0f} {'—' if err is None else f'{err:.2e}':>9} {len(row['seconds']):4d}")
    for name in METHODS:
        if "load_seconds_per_layer" in rows[name]:
            lines.append(f"  {labels[name]}: model load {rows[name]['load_seconds_per_layer']:.2f} s/layer (not "
                         f"counted), peak includes base model + adapters {rows[name]['model_mb']:.0f} MB")
    lines.append(f"  linear --rank on the PEFT svd layers: rel.err {errors['linear_trunc@svd']:.6e}")
    lines.append(f"  s/layer: median wall time; cpu s/l: median CPU time of the process; x cat, x floor: wall-time "
                 f"ratios; peak MB above the import-only baseline ({rows['imports_baseline_mb']:.0f} MB)")
    lines.append("  rel.err = ||Y - target|| / ||target||, float64, from the input factors "
                 "(target: the average; SeedLoRA's τ_m for seedlora)")
    lines += [f"{'PASS' if ok else 'FAIL'}  {text}" for ok, text in checks]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=2, help="layers of the 7B shape (default 2)")
    p.add_argument("--k", type=int, default=3, help="adapters merged (default 3)")
    p.add_argument("--rank", type=int, default=8, help="rank of each input adapter (default 8)")
    p.add_argument("--trunc-rank", type=int, default=16, help="rank of the truncated outputs (default 16)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds; PEFT svd runs once (default 5)")
    p.add_argument("--svd-layers", type=int, default=1, help="layers PEFT svd is timed on (default 1)")
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=11008)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="stored adapter dtype")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1; 0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="keep inputs and outputs here (default: a temporary folder, deleted)")
    p.add_argument("--out-json", help="also write the results as JSON here")
    return p.parse_args(argv)


def prepare_inputs(args, work: Path) -> tuple:
    """Write the K adapters (and, for PEFT svd, the same adapters cut to --svd-layers)."""
    import torch

    svd_layers = min(args.svd_layers, args.layers)
    factors = random_factors(module_shapes(args.hidden, args.intermediate, args.layers), args.k, args.rank,
                             args.seed, getattr(torch, args.dtype))
    svd_modules = set(module_shapes(args.hidden, args.intermediate, svd_layers))
    write = lambda root, names: [str(write_adapter(work / root / f"adapter{i}", {n: f[n] for n in names},
                                                   args.rank, 2 * args.rank)) for i, f in enumerate(factors)]
    adapters = write("in", factors[0])
    spec = {"dims": {"hidden": args.hidden, "intermediate": args.intermediate, "heads": args.heads,
                     "vocab": args.vocab},
            "layers": args.layers, "svd_layers": svd_layers, "adapters": adapters,
            "svd_adapters": adapters if svd_layers == args.layers else write("in_svd", svd_modules),
            "trunc_rank": args.trunc_rank, "threads": args.threads}
    return factors, spec, svd_modules


def header(args, svd_layers: int) -> str:
    import torch

    return (f"Llama-2-7B-shaped adapters: hidden {args.hidden}, intermediate {args.intermediate}, "
            f"{args.layers} layer(s) x 7 modules; K={args.k} rank {args.rank} {args.dtype}; "
            f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} thread(s) per process\n"
            f"median of {args.repeats} interleaved run(s); PEFT svd: 1 run on {svd_layers} layer(s)")


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_merge-"))
    try:
        factors, spec, svd_modules = prepare_inputs(args, work)
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        samples = run_all(ctx, spec, work, args.repeats, log)
        rows = summarize(samples, args.layers, spec["svd_layers"])
        log("computing errors in float64 ...")
        dirs = {n: samples[n][0]["adapter_dir"] for n, (_, _, target, _) in METHODS.items() if target}
        errors = accuracy(factors, dirs, svd_modules)
        checks = check_targets(rows, errors)
        kr = args.k * args.rank
        labels = {n: m[0].format(kr=kr, kr1=kr + 1, t=args.trunc_rank) for n, m in METHODS.items()}
        report = format_report(rows, errors, checks, labels, header(args, spec["svd_layers"]))
        print(report)
        result = {"command": ["eval/bench_merge.py", *(sys.argv[1:] if argv is None else argv)],
                  "args": vars(args), "rows": rows, "errors": errors, "report": report,
                  "targets": [{"passed": ok, "target": text} for ok, text in checks]}
        if args.out_json:
            Path(args.out_json).write_text(json.dumps(result, indent=2) + "\n")
        return result
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
