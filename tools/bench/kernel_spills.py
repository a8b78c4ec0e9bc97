#!/usr/bin/env python
"""Registers and spills of the fused relation kernels per GPU, without a GPU (ahead-of-time compilation).

    python tools/bench/kernel_spills.py [--arch 80,86,90] [--relation-heads 48,24,12,6,3] \
        [--candidates-at 48] [--out tools/bench/results/kernel_spills.md]

Triton compiles for a target it is told (`triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`)
without a device; the PTX it produces is assembled again here by the ptxas bundled in the triton wheel,
with `-v` and the flags Triton itself passes, whose report gives, per (kernel, input dtype, precision,
head tiles, BLOCK_M x BLOCK_N / warps / stages, sm_XX): registers per thread, spill stores and loads
(bytes per thread) and the shared memory Triton's layouts and pipelining need (against the target's
per-block limit). The integer arguments are specialized as a launch at the given shape specializes
them (16-divisible values and 16-byte-aligned pointers carry tt.divisibility = 16): B=32, S=512,
widths 768 / 384 (BERT-base to 384) and each --relation-heads A_r: 48 (head dims 16 / 8: head tiles
BLOCK_DT = BLOCK_DS = 16), 24 (32 / 16), 12 (64 / 32), 6 (128 / 64), 3 (256 / 128).

Rows marked "default" are `distill.kernels.relation_kl.gpu_blocks`'s tiles; at the A_r of
--candidates-at the candidate tiles are compiled too, which is how the defaults were chosen (see
that module's docstring). Exit status 0, or 2 when a kernel fails to compile.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone

DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
POINTER_ARGS = ("TM", "TN", "SM", "SN")
# BLOCK_M x BLOCK_N / warps / stages candidates per kernel (the library's defaults are compiled first)
CANDIDATES = {"forward": "64x64/4/2,64x32/4/2,32x64/4/2,32x64/4/1,32x32/4/2,16x32/4/1",
              "backward": "64x64/4/2,32x64/4/2,32x64/4/1,16x64/4/1,32x32/4/2,32x32/4/1,16x32/4/1,16x16/4/1"}
# shared memory a block may use (bytes, opt-in maximum): A100 (sm_80), RTX 30 / A10 (sm_86), H100 (sm_90)
SHARED_LIMITS = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
REGISTER_HEADROOM = 240     # the defaults stay at or below this many of the 255 registers a thread may hold


@dataclass(frozen=True)
class Shape:
    """The launch the specialization mimics: [B, S, H] inputs (contiguous), A_r relation heads."""

    batch: int
    seq: int
    heads: int
    width_t: int
    width_s: int

    @property
    def head_dims(self) -> tuple[int, int]:
        return self.width_t // self.heads, self.width_s // self.heads


def int_values(kernel_name: str, shape: Shape) -> dict[str, int]:
    """The values of the kernel's integer arguments at `shape` (contiguous [B, S, H] tensors)."""
    d_t, d_s = shape.head_dims
    s, t_w, s_w = shape.seq, shape.width_t, shape.width_s
    values = dict(stride_tm_b=s * t_w, stride_tm_s=t_w, stride_tn_b=s * t_w, stride_tn_s=t_w,
                  stride_sm_b=s * s_w, stride_sm_s=s_w, stride_sn_b=s * s_w, stride_sn_s=s_w, stride_kb_b=s,
                  seq=s, num_heads=shape.heads, d_t=d_t, d_s=d_s)
    if kernel_name == "backward":
        values.update(stride_w_b=s, stride_dm_b=s * s_w, stride_dm_s=s_w, stride_dn_b=s * s_w, stride_dn_s=s_w)
    return values


def signature_and_attrs(kernel, kernel_name: str, dtype: str, shape: Shape) -> tuple[dict, dict]:
    """Triton's signature ({arg: "*bf16" / "i32" / "fp32" / "constexpr"}) and the divisibility attributes
    ({(index,): [["tt.divisibility", 16]]}) a launch at `shape` would give."""
    values = int_values(kernel_name, shape)
    signature, attrs = {}, {}
    for index, arg in enumerate(kernel.arg_names):
        if arg in POINTER_ARGS:
            signature[arg] = "*" + DTYPES[dtype]
        elif arg.isupper() and not arg.startswith(("BLOCK", "PREC")):
            signature[arg] = "*fp32"
        elif arg in values:
            signature[arg] = "i32"
        elif arg in ("scale_t", "scale_s", "grad_scale"):
            signature[arg] = "fp32"
        else:
            signature[arg] = "constexpr"
        if signature[arg].startswith("*") or (arg in values and values[arg] % 16 == 0):
            attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, attrs


def parse_ptxas(log: str) -> dict:
    """registers, spill_stores, spill_loads (bytes per thread), stack frame, from `ptxas -v`'s report."""
    regs = re.findall(r"Used (\d+) registers", log)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    frame = re.findall(r"(\d+) bytes stack frame", log)
    if not regs or not spills:
        raise ValueError(f"ptxas -v printed no register report:\n{log[-2000:]}")
    return dict(registers=int(regs[-1]), spill_stores=int(spills[-1][0]), spill_loads=int(spills[-1][1]),
                stack_frame=int(frame[-1]) if frame else 0)


def ptxas_report(ptx: str, capability: int) -> dict:
    """Assemble `ptx` with the ptxas of the triton wheel for sm_<capability>, as Triton does, with -v."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [get_ptxas(capability).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
               f"--gpu-name={sm_arch_from_capability(capability)}", src, "-o", os.path.join(tmp, "kernel.o")]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return parse_ptxas(proc.stderr + proc.stdout)


def dtype_of(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def compile_one(kernel_name: str, dtype: str, precision: str, blocks, shape: Shape, capability: int) -> dict:
    """One row: compile the kernel for sm_<capability> at `blocks` and read ptxas's report."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from distill.kernels import relation_kl as rk

    kernel = rk._relation_kl_fwd if kernel_name == "forward" else rk._relation_kl_bwd
    d_t, d_s = shape.head_dims
    block_m, block_n, warps, stages = blocks
    dot = "tf32" if dtype in ("bfloat16", "float16") else precision    # as relation_kl._dot_precision
    constants = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_DT=rk._head_block(d_t), BLOCK_DS=rk._head_block(d_s),
                     PREC_T=dot, PREC_S=dot)
    if kernel_name == "backward":
        constants["PREC_G"] = precision
    signature, attrs = signature_and_attrs(kernel, kernel_name, dtype, shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = triton.compile(ASTSource(kernel, signature, constants, attrs),
                                  target=GPUTarget("cuda", capability, 32),
                                  options=dict(num_warps=warps, num_stages=stages))
    report = ptxas_report(compiled.asm["ptx"], capability)
    default = rk.gpu_blocks(kernel_name, dtype_of(dtype), max(d_t, d_s), precision)
    return dict(kernel=kernel_name, dtype=dtype, precision=precision, heads=shape.heads,
                head_blocks=(constants["BLOCK_DT"], constants["BLOCK_DS"]), blocks=tuple(blocks), sm=capability,
                shared=compiled.metadata.shared, shared_limit=SHARED_LIMITS.get(capability),
                default=tuple(blocks) == default, **report)


def plan(args, shape: Shape, candidates: bool) -> list[tuple]:
    """Every (kernel, dtype, precision, tiles, sm) to compile at `shape`: the library's default tiles first,
    then (`candidates`) the candidates. Half-precision inputs take "tf32" for the logits whatever the
    precision: their forward is compiled once (as "ieee"), their backward per precision (its gradient products)."""
    from distill.kernels import relation_kl as rk

    rows = []
    for kernel_name in args.kernel.split(","):
        for dtype in args.dtype.split(","):
            precisions = ["ieee"] if dtype != "float32" and kernel_name == "forward" else args.precision.split(",")
            for precision in precisions:
                default = rk.gpu_blocks(kernel_name, dtype_of(dtype), max(shape.head_dims), precision)
                more = [rk.parse_tiles(t) for t in getattr(args, f"{kernel_name}_tiles").split(",")] if candidates \
                    else []
                for blocks in [default] + [t for t in more if t != default]:
                    for capability in (int(a) for a in args.arch.split(",")):
                        rows.append((kernel_name, dtype, precision, blocks, capability))
    return rows


def verdict(row: dict) -> str:
    if row["spill_stores"] or row["spill_loads"]:
        return "SPILLS"
    if row["shared_limit"] is not None and row["shared"] > row["shared_limit"]:
        return "over the shared memory limit"
    return f"> {REGISTER_HEADROOM} registers" if row["registers"] > REGISTER_HEADROOM else "fits"


def fits(row: dict) -> bool:
    """No spill, registers within the headroom, shared memory within the target's limit."""
    return verdict(row) == "fits"


def row_text(r: dict) -> str:
    b = r["blocks"]
    return (f"| {r['kernel']} | {r['dtype']} | {r['precision']} | {r['heads']} | {r['head_blocks'][0]} / "
            f"{r['head_blocks'][1]} | {b[0]}x{b[1]}/{b[2]}/{b[3]}{' (default)' if r['default'] else ''} | "
            f"sm_{r['sm']} | {r['registers']} | {r['spill_stores']} / {r['spill_loads']} | {r['shared']:,} | "
            f"{verdict(r)} |")


def markdown(args, rows: list[dict], argv: list[str]) -> str:
    import triton

    defaults = [r for r in rows if r["default"]]
    bad = [r for r in defaults if not fits(r)]
    header = ["| kernel | inputs | precision | A_r | BLOCK_DT / BLOCK_DS | BLOCK_M x BLOCK_N / warps / stages | target "
              "| registers | spill stores / loads (bytes) | shared memory (bytes) | verdict |",
              "|---|---|---|---:|---|---|---|---:|---:|---:|---|"]
    lines = [f"# kernel_spills: registers and spills of the fused relation kernels (triton {triton.__version__})", "",
             f"`kernel_spills.py {' '.join(argv)}`, {datetime.now(timezone.utc).isoformat(timespec='seconds')}", "",
             f"Ahead-of-time compilation (no GPU), specialized as a launch at B={args.batch}, S={args.seq}, widths "
             f"{args.widths.replace(',', ' / ')} and the row's A_r; registers and spills per thread from the triton "
             f"wheel's ptxas -v; shared memory per block against the target's limit (sm_80 {SHARED_LIMITS[80]:,}, "
             f"sm_86 {SHARED_LIMITS[86]:,}, sm_90 {SHARED_LIMITS[90]:,} bytes). Half-precision inputs take tl.dot's "
             f"\"tf32\" for the logits (exact for them): the precision column only matters for float32 products "
             f"and for the backward's gradient products. \"fits\": no spill, at most {REGISTER_HEADROOM} "
             f"registers, shared memory within the limit. Rows marked (default): "
             f"distill.kernels.relation_kl.gpu_blocks.", "",
             f"Default tiles: {len(defaults)} rows, {len(bad)} that do not fit"
             + ("." if not bad else " (A_r and head tiles where no tile fits, see the module's docstring):"), "",
             *([*header, *[row_text(r) for r in bad], ""] if bad else []),
             "All rows:", "", *header, *[row_text(r) for r in rows], ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", default="80,86,90", help="compute capabilities: 80 (A100), 86 (A10 / RTX 30), 90 (H100)")
    p.add_argument("--kernel", default="forward,backward", help="which kernels")
    p.add_argument("--dtype", default="float32,bfloat16,float16", help="the Q/K/V input dtypes")
    p.add_argument("--precision", default="ieee,tf32x3", help="tl.dot precisions for float32 products")
    p.add_argument("--relation-heads", default="48,24,12,6,3", help="A_r values, comma-separated")
    p.add_argument("--candidates-at", default="48", help="A_r values at which the candidate tiles are compiled too "
                                                         "('' for none)")
    p.add_argument("--forward-tiles", default=CANDIDATES["forward"])
    p.add_argument("--backward-tiles", default=CANDIDATES["backward"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--widths", default="768,384", help="teacher,student hidden sizes")
    p.add_argument("--out", default=None, help="write the Markdown table here")
    args = p.parse_args(argv)
    width_t, width_s = (int(w) for w in args.widths.split(","))
    candidates_at = {int(a) for a in args.candidates_at.split(",") if a.strip()}
    rows = []
    for heads in (int(a) for a in args.relation_heads.split(",")):
        shape = Shape(args.batch, args.seq, heads, width_t, width_s)
        for kernel_name, dtype, precision, blocks, capability in plan(args, shape, heads in candidates_at):
            try:
                row = compile_one(kernel_name, dtype, precision, blocks, shape, capability)
            except Exception as exc:  # a compile error: reported, and the exit status says so
                print(f"error: {kernel_name} {dtype} {precision} A_r={heads} {blocks} sm_{capability}: "
                      f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                      file=sys.stderr)
                return 2
            rows.append(row)
            print(row_text(row), flush=True)
    text = markdown(args, rows, argv)
    if args.out:
        from distill.io import atomic_write_bytes

        atomic_write_bytes(args.out, [text.encode("utf-8")])
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
