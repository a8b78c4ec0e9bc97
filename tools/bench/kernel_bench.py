#!/usr/bin/env python
"""GPU benchmark of the relation loss alone: the fused Triton kernels vs the chunked and the reference torch.

    python tools/bench/kernel_bench.py [--dtype float32,bfloat16] [--out tools/bench/results/kernel_bench_<gpu>.md]

Forward + backward of relation_loss for relations qq, kk, vv on random [B, S, H] projections,
default B=32, S=512, A_r=48, teacher width 768, student width 384, all tokens real (--pad-fraction
for right padding), for each --dtype:
  - reference: distill.relations.relation_loss(chunk_size=None), autograd over [B, A_r, S, S];
  - chunked: relation_loss(chunk_size=c) for each c of --chunk-sizes;
  - triton: distill.kernels.relation_loss_triton for each --precision and each --blocks
    configuration (forward tiles + backward tiles, each BLOCK_M x BLOCK_N / warps / stages; the
    first of the default list, "default", is the library's per dtype, precision and head size, the
    second its former 64x64/4/2 + 32x64/4/2); the fastest is "best triton".
Times come from CUDA events around each forward + backward: --warmup untimed runs (they include
Triton's compilation), then the median and the fastest of --repeats. Forward alone is timed the
same way. Peak memory is torch.cuda.max_memory_allocated above the allocation before the first
run of each implementation (inputs excluded, student gradients included). Each row also gives the
relative difference of its loss and student gradients to the reference's.
Targets (issue 6): best triton at least 3x faster than the best chunked, at least 8x less peak
memory than the reference.

`--json PATH` also writes, per dtype, the best of each implementation and the two ratios (what
tools/gpu_check.py reads). Needs a CUDA GPU and triton; without them it says so and exits with status 2.
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from distill.kernels import DOT_PRECISIONS
from distill.relations import relation_loss

QKV = {(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SPEEDUP_TARGET = 3.0        # best triton vs best chunked, forward + backward median
MEMORY_TARGET = 8.0         # reference peak / best triton peak
# forward tiles + backward tiles; "default": the library's, per dtype, precision and head size
# (distill.kernels.relation_kl.gpu_blocks); then the former defaults (64x64/4/2 + 32x64/4/2) and others
DEFAULT_BLOCKS = ("default,64x64/4/2+32x64/4/2,64x64/4/2+16x64/4/1,64x32/4/2+32x32/4/1,"
                  "128x64/8/2+32x64/4/2,64x64/4/3+16x64/4/2")


def parse_blocks(text: str) -> list:
    """'default,64x64/4/2+32x64/4/2,...' -> [None, ((64, 64, 4, 2), (32, 64, 4, 2)), ...]: BLOCK_M x BLOCK_N /
    warps / stages of the forward, '+', the same of the backward; one configuration without '+' serves both;
    "default" (alone: both kernels; or as one half) the library's default tiles."""
    def one(item):
        if item.strip() == "default":
            return None
        tiles, warps, stages = item.strip().split("/")
        block_m, block_n = tiles.split("x")
        return int(block_m), int(block_n), int(warps), int(stages)
    out = []
    for item in text.split(","):
        halves = [one(half) for half in item.split("+")]
        out.append(None if halves == [None] else (halves[0], halves[-1]))
    return out


def blocks_name(blocks) -> str:
    if blocks is None:
        return "default tiles"
    return " + ".join("default" if b is None else f"{b[0]}x{b[1]}/{b[2]}/{b[3]}" for b in blocks)


class Timer:
    """CUDA events on the GPU; perf_counter in the CPU dry run (interpreter, for testing this script)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def __call__(self, fn) -> float:
        if self.cuda:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize(self.device)
            return start.elapsed_time(stop) / 1000
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def make_inputs(args, dtype: torch.dtype, device: torch.device):
    gen = torch.Generator(device="cpu").manual_seed(0)
    shape = (args.batch, args.seq)
    teacher = tuple(torch.randn(*shape, args.teacher_width, generator=gen).to(device, dtype) for _ in range(3))
    student = tuple(torch.randn(*shape, args.student_width, generator=gen).to(device, dtype).requires_grad_()
                    for _ in range(3))
    lengths = torch.full((args.batch,), args.seq)
    if args.pad_fraction > 0:          # right padding, lengths spread between (1 - pad_fraction) S and S
        lengths = args.seq - (torch.rand(args.batch, generator=gen) * args.pad_fraction * args.seq).long()
    mask = (torch.arange(args.seq)[None, :] < lengths[:, None]).long().to(device)
    return teacher, student, mask


def measure(name: str, loss_fn, inputs, args, timer: Timer, device: torch.device) -> dict:
    """Median / fastest forward+backward and forward time, peak memory, the loss and the gradients."""
    teacher, student, mask = inputs
    cuda = device.type == "cuda"

    def clear():
        for s in student:
            s.grad = None

    def forward():
        return loss_fn(teacher, student, mask)[0]

    def step():
        forward().backward()

    clear()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    try:
        times, fwd_times = [], []
        for i in range(args.warmup + args.repeats):
            clear()
            elapsed = timer(step)
            if i >= args.warmup:
                times.append(elapsed)
        peak = torch.cuda.max_memory_allocated(device) - base if cuda else 0
        with torch.no_grad():
            for i in range(args.warmup + args.repeats):
                elapsed = timer(forward)
                if i >= args.warmup:
                    fwd_times.append(elapsed)
        clear()
        total = forward()
        total.backward()
        grads = [s.grad.detach().float().clone() for s in student]
    except torch.cuda.OutOfMemoryError as exc:
        clear()
        return {"name": name, "error": f"out of memory: {str(exc).splitlines()[0]}"}
    row = {"name": name, "median_s": statistics.median(times), "min_s": min(times),
           "fwd_median_s": statistics.median(fwd_times), "peak_bytes": peak, "loss": total.item(), "grads": grads}
    print(f"  {name}: {row['median_s'] * 1e3:.2f} ms fwd+bwd (fwd {row['fwd_median_s'] * 1e3:.2f} ms), "
          f"peak {peak / 2**20:,.0f} MiB", file=sys.stderr, flush=True)
    clear()
    return row


def rel_diff(row: dict, ref: dict) -> tuple[float, float]:
    loss = abs(row["loss"] - ref["loss"]) / abs(ref["loss"])
    grad = max(((g - r).abs().max() / r.abs().max()).item() for g, r in zip(row["grads"], ref["grads"], strict=True))
    return loss, grad


def run_dtype(args, dtype_name: str, timer: Timer, device: torch.device) -> dict:
    from distill.kernels import relation_loss_triton

    dtype = DTYPES[dtype_name]
    heads = args.relation_heads
    print(f"# {dtype_name}: B={args.batch} S={args.seq} A_r={heads} teacher {args.teacher_width} "
          f"student {args.student_width}", file=sys.stderr, flush=True)
    inputs = make_inputs(args, dtype, device)
    rows = []

    def torch_loss(chunk):
        return lambda t, s, m: relation_loss(t, s, m, num_relation_heads=heads, relations=QKV, chunk_size=chunk)

    rows.append(dict(measure("reference (chunk_size=None)", torch_loss(None), inputs, args, timer, device),
                     kind="reference"))
    for chunk in args.chunk_sizes:
        rows.append(dict(measure(f"chunked (chunk_size={chunk})", torch_loss(chunk), inputs, args, timer, device),
                         kind="chunked"))
    for precision in args.precisions:
        for blocks in args.blocks:
            def loss(t, s, m, precision=precision, blocks=blocks):
                return relation_loss_triton(t, s, m, num_relation_heads=heads, relations=QKV,
                                            precision=precision, blocks=blocks)
            rows.append(dict(measure(f"triton ({precision}, {blocks_name(blocks)})", loss, inputs, args, timer,
                                     device), kind="triton"))
    ref = next((r for r in rows if r["kind"] == "reference" and "error" not in r), None)
    if ref is None:     # the reference ran out of memory: compare with the first chunked row instead
        ref = next((r for r in rows if r["kind"] == "chunked" and "error" not in r), None)
    for row in rows:
        if "error" not in row and ref is not None:
            row["loss_diff"], row["grad_diff"] = rel_diff(row, ref)
    for row in rows:
        row.pop("grads", None)
    return {"dtype": dtype_name, "rows": rows, "compared_with": None if ref is None else ref["name"]}


def best(rows, kind):
    ok = [r for r in rows if r["kind"] == kind and "error" not in r]
    return min(ok, key=lambda r: r["median_s"]) if ok else None


def summary(results) -> list[dict]:
    """Per dtype: the best row of each implementation (median s, peak bytes, diffs) and the two target ratios."""
    out = []
    for result in results:
        rows = result["rows"]
        picked = {kind: best(rows, kind) for kind in ("reference", "chunked", "triton")}
        fused, chunked, ref = picked["triton"], picked["chunked"], picked["reference"]
        out.append({"dtype": result["dtype"],
                     "best": {k: v and {f: v.get(f) for f in ("name", "median_s", "peak_bytes", "loss_diff",
                                                               "grad_diff")} for k, v in picked.items()},
                     "speedup_vs_chunked": chunked["median_s"] / fused["median_s"] if fused and chunked else None,
                     "memory_ratio_vs_reference": (ref["peak_bytes"] / max(fused["peak_bytes"], 1)
                                                   if fused and ref else None),
                     "errors": [f"{r['name']}: {r['error']}" for r in rows if "error" in r]})
    return out


def floor_note(args) -> str:
    """Work of one fused forward + backward, for reading the times against the GPU's rates."""
    elements = args.batch * args.relation_heads * args.seq * args.seq * len(QKV)       # logits per side
    d_t, d_s = args.teacher_width // args.relation_heads, args.student_width // args.relation_heads
    # forward: both logit products; backward: both again + the two student gradient products
    flops = 2 * elements * (2 * (d_t + d_s) + 2 * d_s)
    exps = 4 * elements
    return (f"Fused work per forward + backward: {elements / 1e9:.2f} G logits per side, {flops / 1e9:.0f} GFLOP of "
            f"products (d_t={d_t}, d_s={d_s}; tiles pad the head dimension to at least 16), {exps / 1e9:.1f} G "
            f"exponentials; no [B, A_r, S, S] tensor is written.")


def markdown(args, results, device, argv) -> str:
    import triton

    cuda = device.type == "cuda"
    gpu = torch.cuda.get_device_name(device) if cuda else f"CPU dry run ({platform.machine()})"
    timing = "CUDA events" if cuda else ("perf_counter in Triton's CPU interpreter: a test of this script, "
                                         "its times say nothing about the kernels")
    memory = ("Peak memory: max_memory_allocated above the inputs (student gradients included)." if cuda
              else "Memory is not measured on CPU.")
    lines = [f"# kernel_bench: {gpu}", "",
             f"torch {torch.__version__}, CUDA {torch.version.cuda}, triton {triton.__version__}; "
             f"`kernel_bench.py {' '.join(argv)}`, {datetime.now(timezone.utc).isoformat(timespec='seconds')}", "",
             f"Relation loss alone, forward + backward of qq, kk, vv; B={args.batch}, S={args.seq}, "
             f"A_r={args.relation_heads}, teacher width {args.teacher_width}, student width {args.student_width}, "
             f"pad fraction {args.pad_fraction}; {timing}, median of {args.repeats} after {args.warmup} "
             f"warm-up runs. {memory}", "",
             floor_note(args), ""]
    for result in results:
        rows = result["rows"]
        lines += [f"## {result['dtype']} inputs", "",
                  "| implementation | fwd+bwd median (ms) | fastest (ms) | fwd median (ms) | peak memory (MiB) "
                  "| loss rel. diff | grad rel. diff (max) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for row in rows:
            if "error" in row:
                lines.append(f"| {row['name']} | failed: {row['error']} | | | | | |")
                continue
            lines.append(f"| {row['name']} | {row['median_s'] * 1e3:.2f} | {row['min_s'] * 1e3:.2f} | "
                         f"{row['fwd_median_s'] * 1e3:.2f} | {row['peak_bytes'] / 2**20:,.0f} | "
                         f"{row.get('loss_diff', math.nan):.1e} | {row.get('grad_diff', math.nan):.1e} |")
        lines.append("")
        lines.append(f"Differences are relative to {result['compared_with']} (max |diff| / max |reference| over each "
                     f"student gradient).")
        ref, chunked, fused = best(rows, "reference"), best(rows, "chunked"), best(rows, "triton")
        lines.append("")
        if not cuda:
            continue
        if fused and chunked:
            speedup = chunked["median_s"] / fused["median_s"]
            lines.append(f"- best triton, {fused['name']}: {speedup:.2f}x faster than the best chunked "
                         f"({chunked['name']}) (target >= {SPEEDUP_TARGET}x: "
                         f"{'met' if speedup >= SPEEDUP_TARGET else 'MISSED'})")
        if fused and ref:
            saving = ref["peak_bytes"] / max(fused["peak_bytes"], 1)
            lines.append(f"- peak memory: reference / best triton = {saving:.1f}x (target >= {MEMORY_TARGET}x: "
                         f"{'met' if saving >= MEMORY_TARGET else 'MISSED'}); triton vs reference time "
                         f"{ref['median_s'] / fused['median_s']:.2f}x faster")
        elif fused and not ref:
            lines.append("- the reference did not run (see its row), so the memory ratio is not measured")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--relation-heads", type=int, default=48)
    p.add_argument("--teacher-width", type=int, default=768)
    p.add_argument("--student-width", type=int, default=384)
    p.add_argument("--pad-fraction", type=float, default=0.0, help="right-pad each example by up to this fraction of S")
    p.add_argument("--dtype", type=lambda s: s.split(","), default=["float32", "bfloat16"],
                   help="comma-separated input dtypes among float32, bfloat16, float16")
    p.add_argument("--chunk-sizes", type=lambda s: [int(c) for c in s.split(",")], default=[64, 128])
    p.add_argument("--precisions", type=lambda s: s.split(","), default=["ieee", "tf32x3"],
                   help=f"tl.dot input precisions for float32 operands: {', '.join(DOT_PRECISIONS)}")
    p.add_argument("--blocks", type=parse_blocks, default=parse_blocks(DEFAULT_BLOCKS),
                   help="Triton tiles, comma-separated: default (the library's) or FORWARD+BACKWARD, each "
                        "BLOCK_MxBLOCK_N/warps/stages or default "
                        f"({DEFAULT_BLOCKS})")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", type=Path, help="write the Markdown result here")
    p.add_argument("--json", type=Path, help="write the per-dtype summary (best rows, ratios, targets) as JSON here")
    # tests this script in the Triton interpreter
    p.add_argument("--cpu-dry-run", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in args.dtype:
        if name not in DTYPES:
            p.error(f"--dtype {name!r}: choose among {', '.join(DTYPES)}")
    for name in args.precisions:
        if name not in DOT_PRECISIONS:
            p.error(f"--precisions {name!r}: choose among {', '.join(DOT_PRECISIONS)}")

    from distill.kernels import unavailable_reason

    if args.cpu_dry_run:
        device = torch.device("cpu")
        args.blocks = [None]
    else:
        device = torch.device("cuda")
        if not torch.cuda.is_available():
            print("kernel_bench: no CUDA GPU here; this benchmark measures the Triton kernels on a GPU and has "
                  "nothing to measure on a CPU (the CPU timings of the torch versions are in relation_bench.py)",
                  file=sys.stderr)
            return 2
    reason = unavailable_reason(device)
    if reason is not None:
        print(f"kernel_bench: the Triton relation loss cannot run: {reason}", file=sys.stderr)
        return 2
    timer = Timer(device)
    results = [run_dtype(args, name, timer, device) for name in args.dtype]
    text = markdown(args, results, device, argv)
    print(text)
    from distill.io import atomic_write_bytes, atomic_write_json

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out, [(text + "\n").encode("utf-8")])
    if args.json:
        atomic_write_json(args.json, {"device": "cpu dry run" if args.cpu_dry_run else torch.cuda.get_device_name(),
                                      "targets": {"speedup_vs_chunked": SPEEDUP_TARGET,
                                                  "memory_ratio_vs_reference": MEMORY_TARGET},
                                      "dtypes": summary(results)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
