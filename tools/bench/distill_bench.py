#!/usr/bin/env python
"""Throughput and memory of the real distillation step (distill.trainer.train_step) for a model pair.

    python tools/bench/distill_bench.py --teacher bert-base --student-layers 6 --student-hidden 384 \
        --seq-len 128 512 --batch 32 --deepspeed-config ds_configs/single_gpu_bf16.json \
        [--memory-budget-gb 48 --find-max-batch] --out tools/bench/results/distill_bench_<gpu>.md

What runs is what `launch/distill.py` runs: the DeepSpeed engine built from the given JSON (its
"auto" values filled from these settings), the frozen teacher (float16 on CUDA), the student
created from it, MiniLMv2Objective with --relation-impl (auto: the fused Triton kernels on CUDA,
after their self-check in the dtype the engine trains the student in, else the chunked loss), and
`train_step` (forward, loss, engine.backward, engine.step) on full windows of random token ids. `--teacher` is a
model directory or hub name, or `bert-base` / `bert-large` (or `tiny`, 2 x 64, for dry runs)
for a randomly initialised model of that shape (no download). Per sequence length: --warmup
steps, then --steps timed steps (CUDA synchronised); the table gives the median seconds per
step, steps/s, tokens/s, peak memory (CUDA: torch.cuda.max_memory_allocated; CPU: the
process's peak RSS) and, on CUDA, the model FLOPs utilisation: (teacher forward + 3 x student
forward + relation loss) FLOPs per second over the GPU's dense bf16 peak (`--peak-tflops`
overrides the table in distill/monitor.py). The loss's share of the step is the median time of
the relation loss alone (forward + backward, on random Q/K/V of the step's shapes and dtypes,
same implementation) over the median step time. Each row also names the optimizer DeepSpeed
built and the teacher's attention implementation and dtype.
`--json PATH` writes the rows and the settings as JSON as well (tools/gpu_check.py reads it).

`--memory-budget-gb B` caps this process at B GB of GPU memory (set_per_process_memory_fraction),
to show what fits on a 48 GB card on a bigger one; `--find-max-batch` then searches, per sequence
length, the largest micro-batch whose step runs inside the budget (doubling, then bisection).
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import torch

from distill.config import DistillConfig, load_deepspeed_json, resolve_deepspeed_config
from distill.monitor import peak_flops, step_flops

SHAPES = {  # randomly initialised teachers of the usual shapes
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--teacher", default="bert-base",
                   help="model directory / hub name, or bert-base / bert-large / tiny (random init)")
    p.add_argument("--teacher-layer", type=int, default=None, help="1-based distilled teacher layer (default: last)")
    p.add_argument("--student-layers", type=int, default=6)
    p.add_argument("--student-hidden", type=int, default=384)
    p.add_argument("--student-heads", type=int, default=12)
    p.add_argument("--relation-heads", type=int, default=48)
    p.add_argument("--relation-chunk-size", type=int, default=128, help="0: the unchunked reference loss")
    p.add_argument("--relation-impl", default="auto", choices=["auto", "chunked", "reference", "triton"],
                   help="auto: the Triton kernels on CUDA when triton is installed, else chunked")
    p.add_argument("--seq-len", type=int, nargs="+", default=[128, 512])
    p.add_argument("--batch", type=int, default=32,
                   help="micro-batch per step (the starting point of --find-max-batch)")
    p.add_argument("--deepspeed-config", default="auto", help="a ds_configs/*.json file, or auto")
    p.add_argument("--steps", type=int, default=20, help="timed steps per sequence length")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--memory-budget-gb", type=float, default=None, help="cap GPU memory at this many GB (CUDA only)")
    p.add_argument("--find-max-batch", action="store_true", help="search the largest micro-batch within the budget")
    p.add_argument("--max-batch-limit", type=int, default=1024, help="stop the search here")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16/fp16 peak, for MFU")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="write the Markdown table here")
    p.add_argument("--json", default=None, help="write the rows and settings as JSON here")
    args = p.parse_args(argv)
    if args.memory_budget_gb is not None and not torch.cuda.is_available():
        p.error("--memory-budget-gb needs a CUDA GPU; drop it on CPU")
    if args.find_max_batch and args.memory_budget_gb is None and not torch.cuda.is_available():
        p.error("--find-max-batch needs a CUDA GPU (it searches what fits in GPU memory)")
    return args


def build_teacher(spec: str):
    from transformers import AutoModel, BertConfig, BertModel

    if spec in SHAPES:
        torch.manual_seed(0)
        return BertModel(BertConfig(**SHAPES[spec]))
    return AutoModel.from_pretrained(spec)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from distill.distributed import init_distributed

    _, world, _, device = init_distributed()
    if world != 1:
        raise SystemExit("error: run the benchmark as one process (python tools/bench/distill_bench.py ...)")
    if args.memory_budget_gb is not None:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_budget_gb * 1e9 / total), device)

    teacher_model = build_teacher(args.teacher)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(device)
    rows = []
    for seq in args.seq_len:
        row = bench_seq_len(args, seq, teacher_model, device, peak)
        rows.append(row)
        print(format_row(row), flush=True)

    text = report(args, device, rows, peak)
    print(text)
    from distill.io import atomic_write_bytes, atomic_write_json

    if args.out:
        atomic_write_bytes(args.out, [text.encode()])
        print(f"wrote {args.out}")
    if args.json:
        atomic_write_json(args.json, {"device": device_name(device), "peak_flops": peak,
                                      "settings": {k: v for k, v in vars(args).items() if k not in ("out", "json")},
                                      "rows": rows})
        print(f"wrote {args.json}")
    return 0


def run_config(args, seq: int) -> DistillConfig:
    """The DistillConfig `launch/distill.py` would build from the equivalent flags."""
    return DistillConfig(teacher=args.teacher, teacher_layer=args.teacher_layer, student_layer=args.student_layers,
                         student_hidden_size=args.student_hidden, student_attention_heads=args.student_heads,
                         num_relation_heads=args.relation_heads, relation_chunk_size=args.relation_chunk_size,
                         relation_impl=args.relation_impl, max_seq_len=seq, per_device_train_batch_size=args.batch,
                         max_steps=10**6, warmup_steps=10, deepspeed_config=args.deepspeed_config,
                         output_dir="/tmp/distill_bench")


@dataclass
class StepRunner:
    """One built training setup (engine, objective) that times train_step on random full windows."""

    engine: object
    objective: object
    device: torch.device
    vocab: int
    seq: int

    def batch_of(self, batch: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(1000, self.vocab, (batch, self.seq), device=self.device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def timed(self, batch: int, steps: int, warmup: int) -> tuple[list[float], float]:
        """(seconds of each timed step, peak memory in GiB)."""
        from distill.trainer import train_step

        inputs = self.batch_of(batch)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        times = []
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            loss, _ = train_step(self.engine, self.objective, inputs)
            if cuda:
                torch.cuda.synchronize(self.device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
            if not torch.isfinite(loss).item():  # after the timing: the trainer reads it once per step too
                raise SystemExit(f"error: non-finite loss at seq {self.seq}, batch {batch}")
        if cuda:
            return times, torch.cuda.max_memory_allocated(self.device) / 2**30
        return times, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def loss_timed(self, batch: int, steps: int, warmup: int) -> float:
        """Median seconds of the relation loss alone, forward + backward, on random Q/K/V shaped and typed as
        the step's (teacher: its dtype; student: the engine's), with the step's implementation and settings."""
        from distill.relations import relation_loss

        gen = torch.Generator(device="cpu").manual_seed(0)

        def side(width: int, dtype: torch.dtype, grad: bool) -> tuple[torch.Tensor, ...]:
            return tuple(torch.randn(batch, self.seq, width, generator=gen).to(self.device, dtype).requires_grad_(grad)
                         for _ in range(3))

        teacher = side(self.objective.teacher.hidden_size, self.objective.teacher.dtype, False)
        student = side(self.engine.module.config.hidden_size, next(self.engine.module.parameters()).dtype, True)
        mask = torch.ones(batch, self.seq, dtype=torch.long, device=self.device)
        times = []
        for i in range(warmup + steps):
            self._sync()
            t0 = time.perf_counter()
            relation_loss(teacher, student, mask, self.objective.spec)[0].backward()
            self._sync()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
            for s in student:
                s.grad = None
        return statistics.median(times)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def fits(self, batch: int) -> bool:
        try:
            self.timed(batch, 1, 1)
            return True
        except torch.OutOfMemoryError:
            self.engine.zero_grad()
            torch.cuda.empty_cache()
            return False

    def max_batch(self, start: int, limit: int) -> int:
        """The largest micro-batch that fits, up to `limit`: doubling from `start`, then bisection."""
        lo, hi = 0, start
        while hi <= limit and self.fits(hi):
            lo, hi = hi, hi * 2
        hi = min(hi, limit + 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.fits(mid) else (lo, mid)
        if lo == 0:
            raise SystemExit(f"error: not even a micro-batch of 1 fits at seq {self.seq} within the budget")
        return lo


ENGINE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}   # the student's dtype in the engine, per precision


def build_objective(frozen, student, spec, device: torch.device, precision: str):
    """MiniLMv2Objective as launch/distill.py builds it: the fused kernel's self-check (relation_impl auto or
    triton) runs in the dtype the DeepSpeed engine trains the student in ("bf16" / "fp16": bfloat16 /
    float16; "fp32": the student's own), not in the float32 the student is built in."""
    from distill.objective import MiniLMv2Objective

    return MiniLMv2Objective(frozen, student, spec, device=device, student_dtype=ENGINE_DTYPES.get(precision))


def bench_seq_len(args, seq: int, teacher_model, device: torch.device, peak: float | None) -> dict:
    """Build what launch/distill.py builds for windows of `seq` tokens, time its step, and tear it down."""
    from distill.preflight import build_models
    from distill.trainer import initialize_engine

    cfg = run_config(args, seq)
    ds_json, precision = resolve_deepspeed_config(
        cfg, load_deepspeed_json(cfg.deepspeed_config), world_size=1, device_type=device.type,
        bf16_supported=device.type != "cuda" or torch.cuda.is_bf16_supported())
    torch.manual_seed(cfg.seed)
    frozen, student = build_models(cfg, device, teacher=teacher_model)
    objective = build_objective(frozen, student, cfg.relation_spec, device, precision)
    engine = initialize_engine(student, ds_json)  # as launch/distill.py builds it
    engine.train()
    runner = StepRunner(engine, objective, device, frozen.config.vocab_size, seq)
    max_batch = runner.max_batch(args.batch, args.max_batch_limit) if args.find_max_batch else None
    batch = min(args.batch, max_batch) if max_batch else args.batch
    times, mem = runner.timed(batch, args.steps, args.warmup)
    median = statistics.median(times)
    loss_s = runner.loss_timed(batch, args.steps, args.warmup)
    flops = functools.partial(step_flops, frozen.config, student.config, frozen.num_layers,
                              len(objective.spec.relations), run_to_end=frozen.run_to_end)
    row = dict(impl=objective.relation_impl, seq=seq, batch=batch, precision=precision,
               zero=ds_json.get("zero_optimization", {}).get("stage", 0),
               s_per_step=median, steps_per_s=1 / median, tokens_per_s=batch * seq / median, peak_gib=mem,
               mfu=flops(batch, seq) / median / peak if peak else None, max_batch=max_batch,
               loss_s=loss_s, loss_share=loss_s / median,
               fused_adam=type(getattr(engine, "basic_optimizer", None) or engine.optimizer).__name__,
               teacher_attention=frozen.config._attn_implementation, teacher_dtype=str(frozen.dtype).split(".")[-1])
    objective.remove()
    del runner, engine, objective, frozen, student
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def format_row(r: dict) -> str:
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
    return (f"| {r['impl']} | {r['seq']} | {r['batch']} | {r['precision']} | {r['zero']} | {r['fused_adam']} | "
            f"{r['teacher_attention']} ({r['teacher_dtype']}) | {r['s_per_step']:.3f} | "
            f"{r['steps_per_s']:.2f} | {r['tokens_per_s']:,.0f} | {100 * r['loss_share']:.1f}% | "
            f"{r['peak_gib']:.2f} | {mfu} | {r['max_batch'] if r['max_batch'] is not None else '-'} |")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def report(args, device, rows, peak) -> str:
    name = device_name(device)
    import deepspeed
    import transformers

    lines = [
        f"# distill_bench: {args.teacher} -> {args.student_layers} layers x {args.student_hidden}",
        "",
        f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}; device: {name}",
        f"- versions: torch {torch.__version__}, deepspeed {deepspeed.__version__}, "
        f"transformers {transformers.__version__}",
        f"- DeepSpeed config: {args.deepspeed_config}; relation heads {args.relation_heads}, relations qq,kk,vv, "
        f"chunk {args.relation_chunk_size or 'none (reference)'}",
        f"- {args.warmup} warm-up steps, median of {args.steps} timed steps; random full windows",
        f"- memory budget: {args.memory_budget_gb} GB" if args.memory_budget_gb else "- memory budget: none",
        f"- MFU peak: {peak / 1e12:.0f} TFLOP/s" if peak else "- MFU: not computed (no known peak for this device)",
        f"- command: python {' '.join(sys.argv)}",
        "",
        "| loss | seq | micro-batch | precision | ZeRO | optimizer | teacher attention | s/step | steps/s | tokens/s "
        "| loss share | peak memory GiB | MFU | max micro-batch in budget |",
        "|---|---:|---:|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *[format_row(r) for r in rows],
        "",
        "Peak memory: torch.cuda.max_memory_allocated on CUDA, the process's peak RSS on CPU. Loss share: the "
        "relation loss alone (forward + backward, same shapes, dtypes and implementation) over the whole step.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
