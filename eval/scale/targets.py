"""Issue 11's targets, decided from the measured rows: one PASS/FAIL line each, with the numbers."""

from __future__ import annotations

from pathlib import Path

GIB = 2**30


def _ratio(rows: dict, a: str, b: str):
    return rows[a]["seconds"] / rows[b]["seconds"] if a in rows and b in rows else None


def _line(ok, text: str) -> str:
    return f"{'PASS' if ok else 'FAIL'}  {text}" if ok is not None else f"n/a   {text}"


def check_targets(parts: dict) -> list:
    out = []
    if "adapter7b" in parts:
        part, rows = parts["adapter7b"], parts["adapter7b"].rows
        r = _ratio(rows, "seedlora ties --rank 64", "floor: materialise+sum")
        out.append(_line(r is not None and r <= 10, f"TIES -> adapter r64 within 10x of materialise-and-sum: {r:.2f}x"))
        whole = rows["seedlora ties --rank 64"]["seconds"] * 32 / part.layers
        scope = "measured" if part.layers == 32 else f"extrapolated from {part.layers} layers"
        out.append(_line(whole <= 300, f"TIES -> adapter r64, 7B-shaped (32 layers) <= 5 min: {whole:.0f} s ({scope})"))
        for label, floor, limit in (("seedlora linear (exact r24)", "floor: read+write r24", 2),
                                    ("seedlora seedlora (exact r25)", "floor: read+write r25", 2),
                                    ("seedlora linear --rank 16", "floor: read+write r16", 3)):
            r = _ratio(rows, label, floor)
            out.append(_line(r <= limit, f"{label} within {limit}x of its I/O floor (whole processes): {r:.2f}x"))
    if "fused7b" in parts:
        part, rows = parts["fused7b"], parts["fused7b"].rows
        r = _ratio(rows, "seedlora ties --fuse", "floor: copy base")
        out.append(_line(r <= 2, f"fused TIES within 2x of a disk copy of the base: {r:.2f}x"))
        r = _ratio(rows, "mergekit ties (K fused)", "seedlora ties --fuse")
        out.append(_line(r is not None and r >= 5, f"fused TIES >= 5x faster than mergekit ties on the K fused models: "
                                                   f"{r:.2f}x" if r else "mergekit ties not run"))
        out.append(_peak_line(part, "seedlora ties --fuse"))
        peft, ours = rows.get("PEFT ties_svd r64 (1 layer)"), rows.get("seedlora ties --rank 64 (1 layer)")
        if peft and ours:
            slower = peft["seconds"] / ours["seconds"]
            ok = slower >= 50 and peft["rel_err"] >= ours["rel_err"]
            out.append(_line(ok, f"PEFT ties_svd >= 50x slower at equal or higher error: {slower:.0f}x slower; "
                                 f"rel.err PEFT {peft['rel_err']:.5f} vs ours {ours['rel_err']:.5f}"))
    if "layer70b" in parts:
        part = parts["layer70b"]
        out.append(_peak_line(part, "seedlora ties --fuse"))
        r = _ratio(part.rows, "seedlora ties --rank 64", "floor: materialise+sum")
        out.append(_line(r <= 10, f"70B layer: TIES -> adapter r64 within 10x of materialise-and-sum: {r:.2f}x"))
    return out


def _peak_line(part, label: str) -> str:
    shard = max(f.stat().st_size for f in Path(part.base).glob("*.safetensors"))
    peak = part.rows[label]["peak_gb"] * GIB
    return _line(peak < shard + GIB, f"{part.name}: {label} peak RSS {peak / GIB:.2f} GiB < largest shard "
                                     f"{shard / GIB:.2f} GiB + 1 GiB")
