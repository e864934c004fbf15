"""`seedlora merge --dry-run`: the plan as text. Nothing is read beyond headers, nothing is written."""

from __future__ import annotations


def show_preview(p) -> str:
    """The text of a pipeline.Preview: inputs, per-module ranks, output, memory and time."""
    kind = "adapter folder" if p.sink == "adapter" else "model folder"
    lines = [f"dry run: nothing written. merge {len(p.inputs)} input(s) with {p.method} → {kind} {p.output}"]
    lines += [f"  input {i}: {name}" for i, name in enumerate(p.inputs)]
    lines += [f"warning: {w}" for w in p.warnings]
    if p.modules:
        lines.append(f"modules ({len(p.modules)}): name, shape, input ranks, exact rank → written")
        lines += [module_line(m, p.sink) for m in p.modules]
    if p.sink == "adapter":
        lines.append(f"output: rank {p.output_rank} on every module, {p.output_dtype}, {size(p.output_bytes)} of weights "
                     "(+ config, report, provenance, card)")
    else:
        lines.append(f"output: {p.tensors_merged} tensors merged, the rest copied from the base: {size(p.output_bytes)}")
    lines.append(f"reads: {size(p.read_bytes)} of input files")
    lines.append(f"memory peak (estimate): {size(p.peak_bytes)} of tensors at the largest step, above the Python process")
    lines.append(f"time (rough estimate): {p.compute_seconds + p.disk_seconds:.1f} s = {p.compute_seconds:.1f} s compute "
                 f"at {p.flops_per_s / 1e9:.0f} GFLOP/s (one matrix product, measured now) + {p.disk_seconds:.1f} s disk "
                 "at an assumed 500 MB/s")
    return "\n".join(lines)


def module_line(m, sink: str) -> str:
    ranks = "+".join(str(r) for r in m.ranks)
    exact = f"{m.exact_rank} (dense)" if m.dense else str(m.exact_rank)
    written = f"rank {m.output_rank}" if sink == "adapter" else "fused exactly"
    cut = " (truncated)" if sink == "adapter" and m.output_rank < m.exact_rank else ""
    return f"  {m.name}  {m.shape[0]}x{m.shape[1]}  r={ranks}  exact {exact} → {written}{cut}"


def size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} GB"
