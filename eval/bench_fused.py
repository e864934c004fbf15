"""Benchmark: fused-model merge throughput and peak memory, against the disk floor and PEFT.

Writes a synthetic Llama-shaped model (random bf16 shards written directly with safetensors,
never instantiated; TinyLlama-1.1B's shape for --params 1B) and K rank-r PEFT-format LoRA
adapters on every projection, then runs three routes, each in its own subprocess so that
wall time and peak resident memory (VmHWM of that process, imports included) are its own:

  copy      shutil.copyfile of every file of the base: the disk floor
  seedlora  seedlora.fuse_adapters(..., method) streaming base + merged update
  peft      transformers from_pretrained(bf16) + PeftModel, add_weighted_adapter(cat),
            merge_and_unload, save_pretrained with the same shard size

Throughput is the base's weight bytes over wall time, measured twice per run: when the route
returns (output written to the page cache) and after fsync of its output files (on disk).
Dirty pages are synced before each run starts. Routes run in interleaved rounds (copy, seedlora,
peft, copy, …), so a noisy machine's drift hits all alike; the best run of each counts, every
run's time is printed too. Prints a table with ratios and the issue's targets; files go under --workdir (default: a fresh folder in /tmp), deleted at the end.

    python eval/bench_fused.py --params 1B          # the README's table
    python eval/bench_fused.py --params 10M --shard-size 8MB   # smoke run (tests)
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROUTES = ("copy", "seedlora", "peft")
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ------------------------------------------------------------------ synthetic model and adapters
def parse_count(text: str) -> int:
    """'1B' -> 10**9, '10M' -> 10**7, '5e6' -> 5000000."""
    units = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}
    text = text.strip().upper()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(float(text))


def llama_shapes(hidden: int, layers: int, vocab: int) -> tuple[dict, list]:
    """(config fields, [(tensor name, shape)]) of a Llama with TinyLlama's proportions."""
    heads = hidden // 64
    kv_heads = heads // 8 if heads % 8 == 0 else heads
    inter = 64 * round(2.75 * hidden / 64)
    config = dict(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=kv_heads, vocab_size=vocab)
    kv = kv_heads * 64
    shapes = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [(p + "self_attn.q_proj.weight", (hidden, hidden)), (p + "self_attn.k_proj.weight", (kv, hidden)),
                   (p + "self_attn.v_proj.weight", (kv, hidden)), (p + "self_attn.o_proj.weight", (hidden, hidden)),
                   (p + "mlp.gate_proj.weight", (inter, hidden)), (p + "mlp.up_proj.weight", (inter, hidden)),
                   (p + "mlp.down_proj.weight", (hidden, inter)), (p + "input_layernorm.weight", (hidden,)),
                   (p + "post_attention_layernorm.weight", (hidden,))]
    shapes += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return config, shapes


def llama_for(params: int) -> tuple[dict, list]:
    """The smallest hidden size whose model has at least `params` parameters."""
    large = params >= 5 * 10**8
    layers, vocab, step = (22, 32000, 512) if large else (4, 4096, 64)
    hidden = step
    while True:
        config, shapes = llama_shapes(hidden, layers, vocab)
        if sum(math.prod(s) for _, s in shapes) >= params:
            return config, shapes
        hidden += step


def write_base(folder: Path, params: int, shard_bytes: int) -> tuple[int, int, int]:
    """Random bf16 shards + index + config; returns (parameters, weight bytes, largest shard bytes)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    folder.mkdir(parents=True)
    fields, shapes = llama_for(params)
    LlamaConfig(**fields, tie_word_embeddings=False, max_position_embeddings=2048, dtype="bfloat16").save_pretrained(folder)
    groups, size = [[]], 0
    for name, shape in shapes:
        if groups[-1] and size + 2 * math.prod(shape) > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += 2 * math.prod(shape)
    generator, weight_map = torch.Generator().manual_seed(0), {}
    for i, group in enumerate(groups, start=1):
        file = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        state = {n: (torch.randn(s, generator=generator) * 0.02).to(torch.bfloat16) for n, s in group}
        save_file(state, str(folder / file), {"format": "pt"})
        weight_map.update({n: file for n, _ in group})
        del state
    total = sum(2 * math.prod(s) for _, s in shapes)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    largest = max(f.stat().st_size for f in folder.glob("*.safetensors"))
    return sum(math.prod(s) for _, s in shapes), total, largest


def write_adapter(folder: Path, shapes: list, rank: int, seed: int) -> None:
    """A PEFT-format LoRA adapter (r=rank, alpha=2r) on every projection, random non-zero A and B."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    generator, state = torch.Generator().manual_seed(seed), {}
    for name, shape in shapes:
        if name.endswith("_proj.weight"):
            module = "base_model.model." + name[: -len(".weight")]
            state[module + ".lora_A.weight"] = torch.randn(rank, shape[1], generator=generator) / math.sqrt(shape[1])
            state[module + ".lora_B.weight"] = torch.randn(shape[0], rank, generator=generator) * 0.01
    save_file(state, str(folder / "adapter_model.safetensors"), {"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
              "target_modules": list(TARGETS), "bias": "none", "base_model_name_or_path": None}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))


# ------------------------------------------------------------------ the routes (child processes)
def route_copy(base: Path, adapters: list, out: Path, args) -> None:
    out.mkdir()
    for path in sorted(base.iterdir()):
        shutil.copyfile(path, out / path.name)


def route_seedlora(base: Path, adapters: list, out: Path, args) -> None:
    from seedlora import fuse_adapters

    fuse_adapters(adapters, base, out, method=args.method)


def route_peft(base: Path, adapters: list, out: Path, args) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(model, str(adapters[0]), adapter_name="a0")
    names = ["a0"]
    for i, folder in enumerate(adapters[1:], start=1):
        model.load_adapter(str(folder), adapter_name=f"a{i}")
        names.append(f"a{i}")
    model.add_weighted_adapter(names, [1.0 / len(names)] * len(names), "merged", combination_type="cat")
    model.set_adapter("merged")
    model.merge_and_unload().save_pretrained(str(out), max_shard_size=args.shard_size)


# imported before the clock starts: timings cover the work, not Python start-up
PRELOAD = {"copy": (), "seedlora": ("torch", "seedlora"), "peft": ("torch", "peft", "transformers")}


def run_child(args) -> None:
    """Run one route; print {"seconds", "durable_seconds", "peak_rss", "import_rss"} as the last line.

    `seconds` ends when the route returns (its output in the page cache); `durable_seconds`
    after fsync of every output file (its output on disk).
    """
    modules = [importlib.import_module(name) for name in PRELOAD[args.child]]
    if modules:
        modules[0].set_num_threads(args.threads)
    work = Path(args.workdir)
    adapters = sorted(work.glob("adapter*"))
    import_rss = peak_rss()
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    {"copy": route_copy, "seedlora": route_seedlora, "peft": route_peft}[args.child](work / "base", adapters, work / f"out-{args.child}", args)
    seconds = time.perf_counter() - started
    fsync_tree(work / f"out-{args.child}")
    durable = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "durable_seconds": durable, "cpu_seconds": cpu_seconds() - cpu_before,
                      "peak_rss": peak_rss(), "import_rss": import_rss}))


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (kernel copies included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder` to disk."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def peak_rss() -> int:
    """This process's peak resident memory in bytes: VmHWM (fresh at exec), else ru_maxrss.

    ru_maxrss is not used on Linux because it keeps the parent's high-water mark across fork+exec.
    """
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------ driver
def compare_outputs(work: Path, names: list) -> dict:
    """How closely seedlora's and PEFT's fused weights agree on a few tensors (bf16 rounding)."""
    from safetensors import safe_open

    def tensor(folder: Path, name: str):
        index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
        with safe_open(str(folder / index[name]), framework="pt") as handle:
            return handle.get_tensor(name).float()

    equal = total = 0
    worst = 0.0
    for name in names:
        a, b = tensor(work / "out-seedlora", name), tensor(work / "out-peft", name)
        equal, total = equal + int((a == b).sum()), total + a.numel()
        worst = max(worst, float((a - b).abs().max()))
    return {"tensors": names, "identical_share": equal / total, "max_abs_diff": worst}


def measure_all(args, work: Path) -> dict:
    """Best (shortest) of --repeat runs of every route, rounds interleaved (copy, seedlora, peft,
    copy, …) so that a machine's drift hits all routes alike; each run in a fresh process after a sync."""
    runs = {route: [] for route in ROUTES}
    for _ in range(args.repeat):
        for route in ROUTES:
            shutil.rmtree(work / f"out-{route}", ignore_errors=True)
            os.sync()  # earlier writes (the base, other routes) are flushed before the clock starts
            runs[route].append(run_route(route, args, work))
            if route == "copy":
                shutil.rmtree(work / "out-copy")
    return {route: {**min(found, key=lambda r: r["seconds"]), "all_seconds": [r["seconds"] for r in found]}
            for route, found in runs.items()}


def run_route(route: str, args, work: Path) -> dict:
    command = [sys.executable, __file__, "--child", route, "--workdir", str(work), "--method", args.method,
               "--shard-size", args.shard_size, "--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads collapse on a shared machine
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"route {route} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: dict, weight_bytes: int, largest: int) -> str:
    """Cached: output written to the page cache; durable: after fsync of the output files."""
    gib, copy, ours = 2**30, results["copy"], results["seedlora"]
    lines = [f"{'':<10}{'--- written (page cache) ---':>30}{'--- durable (fsync) ---':>30}",
             f"{'route':<10}{'wall s':>8}{'GB/s':>7}{'vs copy':>9}{'':>6}{'wall s':>8}{'GB/s':>7}{'vs copy':>9}{'':>6}"
             f"{'CPU s':>7}{'peak RSS GiB':>13}{'after imports':>14}{'vs seedlora':>12}"]
    for route, r in results.items():
        cells = ""
        for key in ("seconds", "durable_seconds"):
            cells += f"{r[key]:>8.2f}{weight_bytes / r[key] / 1e9:>7.2f}{copy[key] / r[key]:>8.2f}x{'':>6}"
        lines.append(f"{route:<10}{cells}{r['cpu_seconds']:>7.2f}{r['peak_rss'] / gib:>13.2f}{r['import_rss'] / gib:>14.2f}"
                     f"{r['peak_rss'] / ours['peak_rss']:>11.2f}x")
    lines.append("every run (wall s, page cache): " + "; ".join(
        f"{route} " + " ".join(f"{t:.2f}" for t in r["all_seconds"]) for route, r in results.items()))
    lines.append(f"largest shard {largest / gib:.2f} GiB; weights {weight_bytes / 1e9:.2f} GB")
    return "\n".join(lines)


def verdicts(results: dict, largest: int) -> dict:
    s, c, p = results["seedlora"], results["copy"], results["peft"]
    return {
        "throughput >= 1/2 copy (page cache)": c["seconds"] / s["seconds"] >= 0.5,
        "throughput >= 1/2 copy (durable)": c["durable_seconds"] / s["durable_seconds"] >= 0.5,
        "peak < largest shard + 1 GiB": s["peak_rss"] < largest + 2**30,
        "peak >= 3x below PEFT": p["peak_rss"] >= 3 * s["peak_rss"],
    }


def benchmark(args, work: Path) -> dict:
    """Write the model and adapters, run every route, print the table; returns the report."""
    from seedlora.sinks.shard_writer import parse_size

    params, weight_bytes, largest = write_base(work / "base", parse_count(args.params), parse_size(args.shard_size))
    _, shapes = llama_for(parse_count(args.params))
    for i in range(args.k):
        write_adapter(work / f"adapter{i}", shapes, args.rank, seed=i + 1)
    print(f"model: {params / 1e9:.3f}B parameters, bf16, {len(list((work / 'base').glob('*.safetensors')))} shards; "
          f"K={args.k} rank-{args.rank} adapters; method {args.method}; {args.threads} torch thread(s); "
          f"best of {args.repeat}", flush=True)
    results = measure_all(args, work)
    down = [name for name, _ in shapes if name.endswith("down_proj.weight")]
    agreement = compare_outputs(work, [shapes[1][0], down[-1]])
    report = {"params": params, "weight_bytes": weight_bytes, "largest_shard": largest, "k": args.k,
              "rank": args.rank, "method": args.method, "threads": args.threads, "routes": results,
              "agreement": agreement, "targets": verdicts(results, largest)}
    print(table(results, weight_bytes, largest))
    print(f"seedlora vs PEFT weights: {agreement['identical_share']:.4%} identical, max |diff| {agreement['max_abs_diff']:.3g}")
    for target, ok in report["targets"].items():
        print(f"target {target}: {'met' if ok else 'NOT met'}")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="1B", help="model size, e.g. 1B (TinyLlama shape) or 10M")
    parser.add_argument("--shard-size", default="500MB", help="base shard size (also PEFT's max_shard_size)")
    parser.add_argument("--k", type=int, default=3, help="number of adapters")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--method", default="linear")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in every route (1: on a shared 2-core machine more threads only contend)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per route; the fastest is reported")
    parser.add_argument("--workdir", help="scratch folder (default: a new one in /tmp, deleted at the end)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", choices=ROUTES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args)
        return 0
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-fused-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        report = benchmark(args, work)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    finally:
        for name in ["base", "out-copy", "out-seedlora", "out-peft"] + [f"adapter{i}" for i in range(args.k)]:
            shutil.rmtree(work / name, ignore_errors=True)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
