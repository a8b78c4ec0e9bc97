#!/usr/bin/env python
"""Time and memory of the relation loss, and of a whole distillation step against the published recipe.

    python tools/bench/relation_bench.py [--part loss|step|all] [--device auto|cpu|cuda] [--out FILE]

Part 1, "loss": distill.relations.relation_loss alone, forward + backward, relations qq, kk, vv,
on random [B, S, H] projections (teacher width 768, student 384, B=8, S=512, 48 relation heads),
the reference implementation (chunk_size=None, [B, A, S, S] matrices under autograd) against the
chunked one. Median and fastest time over --repeats after --warmup runs. Peak memory is what the
loss adds on top of its inputs: on CUDA torch.cuda.max_memory_allocated above the allocation
before the first run (times from CUDA events); on CPU each implementation runs in a fresh
subprocess and reports the rise of its ru_maxrss (peak resident set) above the value measured
once the inputs exist, so neither inherits the other's allocator pool or page cache.

Part 2, "step": one distillation step, seconds per step, with the offline teacher (assets/teacher,
6 layers, 384 wide) and a 3-layer, 192-wide student initialised from it, 48 relation heads,
relations qq, kk, vv, AdamW, B=32, S=128, full windows of random token ids of the teacher's vocabulary:
  - ours: FrozenTeacher (forward stops at the distilled layer's projections, captured by hooks),
    MiniLMv2Objective with the chunked loss, and again with the reference loss;
  - the published recipe (bertdistiller, minilmv2.bb): teacher and student forwards with
    output_hidden_states=True, Q/K/V recomputed from the distilled layer's input through its
    projections, [B, A, S, S] relation logits, then a Python loop over the batch taking each
    example's softmax / log_softmax / KL(sum) / (A_r * length), divided by B.
The variants alternate step by step so that a busy machine slows them alike.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from distill.relations import relation_loss, relation_name

REPO = Path(__file__).resolve().parents[2]

QKV = {(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LOSS_TIME_TARGET = 1.2      # chunked time <= 1.2 x reference
LOSS_MEMORY_TARGET = 0.25   # chunked peak <= 1/4 of reference
STEP_SPEEDUP_TARGET = 3.0   # ours >= 3 x the published per-example loop


def parse_chunk(text: str) -> int | None:
    return None if text.lower() in ("none", "0", "reference") else int(text)


# --------------------------------------------------------------------------- part 1: the loss
def loss_inputs(args, device):
    gen = torch.Generator().manual_seed(0)
    dtype = loss_dtype(args, device)
    shape = (args.batch, args.seq)
    teacher = tuple(torch.randn(*shape, args.teacher_width, generator=gen).to(device, dtype) for _ in range(3))
    student = tuple(torch.randn(*shape, args.student_width, generator=gen).to(device, dtype).requires_grad_()
                    for _ in range(3))
    mask = torch.ones(shape, dtype=torch.long, device=device)
    return teacher, student, mask


def loss_dtype(args, device) -> torch.dtype:
    if args.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[args.dtype]


def run_loss(args, chunk_size: int | None, device: torch.device) -> dict:
    """Forward + backward of the loss, --warmup then --repeats times; time and peak memory."""
    teacher, student, mask = loss_inputs(args, device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024     # bytes (Linux reports KiB)
    times, loss_value, grad_sum = [], None, None
    for i in range(args.warmup + args.repeats):
        for s in student:
            s.grad = None
        if cuda:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t0 = time.perf_counter()
        total, _ = relation_loss(teacher, student, mask, num_relation_heads=args.relation_heads,
                                 relations=QKV, chunk_size=chunk_size)
        total.backward()
        if cuda:
            stop.record()
            torch.cuda.synchronize(device)
            elapsed = start.elapsed_time(stop) / 1000
        else:
            elapsed = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(elapsed)
        loss_value = total.item()
        grad_sum = sum(s.grad.double().abs().sum().item() for s in student)
        del total
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"chunk_size": chunk_size, "median_s": statistics.median(times), "min_s": min(times),
            "peak_bytes": peak, "loss": loss_value, "grad_abs_sum": grad_sum, "threads": torch.get_num_threads()}


def run_loss_isolated(args, chunk_size: int | None, device: torch.device) -> dict:
    """On CPU, one fresh interpreter per implementation, so that ru_maxrss is this one's peak alone."""
    if device.type == "cuda":
        return run_loss(args, chunk_size, device)
    cmd = [sys.executable, __file__, "--_loss-child", "none" if chunk_size is None else str(chunk_size),
           "--device", "cpu", "--batch", str(args.batch), "--seq", str(args.seq),
           "--relation-heads", str(args.relation_heads), "--teacher-width", str(args.teacher_width),
           "--student-width", str(args.student_width), "--dtype", args.dtype,
           "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last_line = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return {"chunk_size": chunk_size, "error": last_line}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def part_loss(args, device) -> dict:
    print(f"# part 1 (loss): B={args.batch} S={args.seq} A_r={args.relation_heads} teacher width "
          f"{args.teacher_width}, student width {args.student_width}, {loss_dtype(args, device)}, "
          f"{args.warmup} warm-up + {args.repeats} timed runs each ...", file=sys.stderr, flush=True)
    rows = [run_loss_isolated(args, chunk, device) for chunk in (None, *args.chunk_size)]
    return {"config": {k: getattr(args, k) for k in ("batch", "seq", "relation_heads", "teacher_width",
                                                     "student_width", "chunk_size", "repeats", "warmup")}
            | {"dtype": str(loss_dtype(args, device)), "relations": [relation_name(p) for p in QKV]},
            "rows": rows}


def loss_table(result: dict) -> list[str]:
    ref, *chunked = result["rows"]
    ok = "error" not in ref
    lines = ["| implementation | forward+backward, median (s) | fastest (s) | peak memory above inputs (MiB) "
             "| time vs reference | memory vs reference | loss, rel. diff | sum of abs(grad), rel. diff |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in (ref, *chunked):
        chunk = row["chunk_size"]
        name = "reference (chunk_size=None)" if chunk is None else f"chunked (chunk_size={chunk})"
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error']} | | | | | | |")
            continue
        versus = (f"{row['median_s'] / ref['median_s']:.2f}x | {row['peak_bytes'] / max(ref['peak_bytes'], 1):.3f} | "
                  f"{abs(row['loss'] - ref['loss']) / abs(ref['loss']):.1e} | "
                  f"{abs(row['grad_abs_sum'] - ref['grad_abs_sum']) / ref['grad_abs_sum']:.1e}") if ok else "| | |"
        lines.append(f"| {name} | {row['median_s']:.3f} | {row['min_s']:.3f} | {row['peak_bytes'] / 2**20:,.0f} | "
                     f"{versus} |")
    lines.append("")
    for row in chunked:
        if ok and "error" not in row:
            time_ratio = row["median_s"] / ref["median_s"]
            mem_ratio = row["peak_bytes"] / max(ref["peak_bytes"], 1)
            lines.append(f"- chunk_size={row['chunk_size']}: time {time_ratio:.2f}x the reference (target <= "
                         f"{LOSS_TIME_TARGET}x: {'met' if time_ratio <= LOSS_TIME_TARGET else 'MISSED'}), peak memory "
                         f"{mem_ratio:.3f} of it (target <= {LOSS_MEMORY_TARGET}: "
                         f"{'met' if mem_ratio <= LOSS_MEMORY_TARGET else 'MISSED'})")
    return lines


# --------------------------------------------------------------------------- part 2: the step
def step_batch(tokenizer, batch: int, seq: int, device, gen) -> dict:
    """Full windows [CLS] w_1 .. w_{S-2} [SEP] of random ordinary tokens of the vocabulary."""
    vocab = tokenizer.get_vocab()
    ordinary = torch.tensor(sorted(i for t, i in vocab.items() if not (t.startswith("[") and t.endswith("]"))))
    ids = ordinary[torch.randint(len(ordinary), (batch, seq), generator=gen)]
    ids[:, 0] = tokenizer.cls_token_id
    ids[:, -1] = tokenizer.sep_token_id
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "token_type_ids": torch.zeros_like(ids).to(device)}


def published_relation_loss(t_qkv, s_qkv, attention_mask, num_heads: int, relations) -> torch.Tensor:
    """The per-example loop of the published re-implementations, written out here for comparison."""
    def split(x):                                       # [B, S, H] -> (B, A, S, d)
        b, s, h = x.shape
        return x.view(b, s, num_heads, h // num_heads).permute(0, 2, 1, 3)
    t_heads, s_heads = [split(x) for x in t_qkv], [split(x) for x in s_qkv]
    lengths = attention_mask.sum(-1).tolist()
    batch = attention_mask.shape[0]
    loss = 0.0
    for (m, n), weight in relations.items():
        rel_t = t_heads[m - 1] @ t_heads[n - 1].transpose(-1, -2) / math.sqrt(t_heads[0].shape[-1])   # (B, A, S, S)
        rel_s = s_heads[m - 1] @ s_heads[n - 1].transpose(-1, -2) / math.sqrt(s_heads[0].shape[-1])
        relation = 0.0
        for b in range(batch):
            n_b = lengths[b]
            target = torch.softmax(rel_t[b, :, :n_b, :n_b].detach(), dim=-1)
            log_pred = F.log_softmax(rel_s[b, :, :n_b, :n_b], dim=-1)
            kl = F.kl_div(log_pred.reshape(-1, n_b), target.reshape(-1, n_b), reduction="sum")
            relation = relation + kl / (num_heads * n_b)
        loss = loss + weight * relation / batch
    return loss


def part_step(args, device) -> dict:
    from transformers import AutoTokenizer

    from distill.student import create_student
    from distill.teacher import FrozenTeacher

    teacher_dir = Path(args.teacher)
    if not (teacher_dir / "config.json").is_file():
        sys.exit(f"error: no teacher at {teacher_dir}: run `bash tools/fetch_offline_assets.sh`, or pass --teacher DIR")
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    frozen = FrozenTeacher(teacher_dir, teacher_layer=args.teacher_layer, dtype=torch.float32, device=device)
    torch.manual_seed(0)
    student0 = create_student(frozen, args.student_layers, args.step_student_width, args.student_heads).to(device)
    print(f"# part 2 (step): teacher {teacher_dir} ({frozen.num_layers} layers, width {frozen.hidden_size}), "
          f"student {args.student_layers} x {args.step_student_width}, B={args.step_batch} S={args.step_seq} "
          f"A_r={args.relation_heads}, {args.step_warmup} warm-up + {args.step_repeats} timed steps each ...",
          file=sys.stderr, flush=True)

    variants = {}
    for chunk in args.step_chunk_sizes:
        kind = "reference loss" if chunk is None else f"chunked loss (chunk_size={chunk})"
        variants[f"ours: FrozenTeacher + MiniLMv2Objective, {kind}"] = ours_step(frozen, student0, args, chunk)
    variants["published recipe: hidden states + per-example loop"] = published_step(teacher_dir, student0, args,
                                                                                      device)
    gen = torch.Generator().manual_seed(1)
    batches = [step_batch(tokenizer, args.step_batch, args.step_seq, device, gen)
               for _ in range(args.step_warmup + args.step_repeats)]
    rows = time_steps(variants, batches, args.step_warmup, device)
    return {"config": {k: getattr(args, k) for k in ("teacher", "teacher_layer", "student_layers", "step_student_width",
                                                     "student_heads", "relation_heads", "step_batch", "step_seq",
                                                     "step_repeats", "step_warmup")}
            | {"step_chunk_sizes": args.step_chunk_sizes, "relations": [relation_name(p) for p in QKV]},
            "rows": rows}


def _optimizer(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-4)


def ours_step(frozen, student0, args, chunk: int | None):
    """A training step of a copy of student0 through MiniLMv2Objective; returns the loss."""
    from distill.objective import MiniLMv2Objective

    student = copy.deepcopy(student0).train()
    objective = MiniLMv2Objective(frozen, student, num_relation_heads=args.relation_heads, relations=QKV,
                                  chunk_size=chunk)
    opt = _optimizer(student)

    def step(batch):
        loss, _ = objective(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def published_step(teacher_dir: Path, student0, args, device):
    """A training step of a copy of student0 as the published recipe runs it: the whole teacher (no
    truncation, no early stop) with hidden states out, and the per-example loss loop."""
    from transformers import AutoModel

    full_teacher = AutoModel.from_pretrained(teacher_dir, dtype=torch.float32).to(device).eval().requires_grad_(False)
    student = copy.deepcopy(student0).train()
    opt = _optimizer(student)
    t_attn = full_teacher.encoder.layer[args.teacher_layer - 1].attention.self
    s_attn = student.encoder.layer[args.student_layers - 1].attention.self

    def step(batch):
        with torch.no_grad():
            hidden_t = full_teacher(**batch, output_hidden_states=True).hidden_states[args.teacher_layer - 1]
            t_qkv = (t_attn.query(hidden_t), t_attn.key(hidden_t), t_attn.value(hidden_t))
        hidden_s = student(**batch, output_hidden_states=True).hidden_states[args.student_layers - 1]
        s_qkv = (s_attn.query(hidden_s), s_attn.key(hidden_s), s_attn.value(hidden_s))
        loss = published_relation_loss(t_qkv, s_qkv, batch["attention_mask"], args.relation_heads, QKV)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def time_steps(variants: dict, batches: list, warmup: int, device) -> list[dict]:
    """Run every variant on every batch in turn; the median and fastest of the timed steps, the first loss."""
    times = {name: [] for name in variants}
    first_loss = {}
    for i, batch in enumerate(batches):
        for name, step in variants.items():
            torch.manual_seed(1000 + i)     # the same dropout masks for every variant: comparable losses
            _sync(device)
            t0 = time.perf_counter()
            loss = step(batch)
            _sync(device)
            if i == 0:
                first_loss[name] = loss
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return [{"variant": name, "median_s": statistics.median(ts), "min_s": min(ts), "first_loss": first_loss[name]}
            for name, ts in times.items()]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_table(result: dict) -> list[str]:
    rows = result["rows"]
    published = rows[-1]
    lines = ["| variant | s/step, median | fastest | speed-up vs published (median) | loss at step 1 |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['median_s']:.3f} | {row['min_s']:.3f} | "
                     f"{published['median_s'] / row['median_s']:.2f}x | {row['first_loss']:.6f} |")
    best = max(published["median_s"] / row["median_s"] for row in rows[:-1])
    lines += ["", f"- best of ours vs the published recipe: **{best:.2f}x** (target >= {STEP_SPEEDUP_TARGET}x: "
                  f"{'met' if best >= STEP_SPEEDUP_TARGET else 'MISSED'}); every variant starts from the same "
                  f"student weights, so the step-1 losses agree"]
    return lines


# --------------------------------------------------------------------------- main
def machine(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (f"CPU {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")


def loss_heading(cfg: dict) -> str:
    return (f"## Part 1, loss: forward + backward of qq, kk, vv; B={cfg['batch']}, S={cfg['seq']}, "
            f"A_r={cfg['relation_heads']}, teacher width {cfg['teacher_width']}, student width "
            f"{cfg['student_width']}, {cfg['dtype']}; median of {cfg['repeats']} after {cfg['warmup']} warm-up")


def step_heading(cfg: dict) -> str:
    return (f"## Part 2, step: teacher forward, student forward + backward, relation loss, AdamW step; "
            f"B={cfg['step_batch']}, S={cfg['step_seq']}, A_r={cfg['relation_heads']}, "
            f"{cfg['student_layers']}-layer {cfg['step_student_width']}-wide student; median of "
            f"{cfg['step_repeats']} after {cfg['step_warmup']} warm-up")


# --part NAME: (run it, the Markdown heading from its config, its table)
PARTS = {"loss": (part_loss, loss_heading, loss_table), "step": (part_step, step_heading, step_table)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("loss", "step", "all"), default="all")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    p.add_argument("--out", type=Path, help="also write the results: FILE.json as JSON, any other name as Markdown")
    g = p.add_argument_group("part 1, the loss")
    g.add_argument("--batch", type=int, default=8)
    g.add_argument("--seq", type=int, default=512)
    g.add_argument("--relation-heads", type=int, default=48, help="A_r, both parts")
    g.add_argument("--teacher-width", type=int, default=768)
    g.add_argument("--student-width", type=int, default=384)
    g.add_argument("--chunk-size", type=lambda s: [int(c) for c in s.split(",")], default=[64],
                   help="query rows per chunk of the chunked loss; several, comma-separated, give one row each")
    g.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                   help="projection dtype; auto: bfloat16 on CUDA, float32 on CPU")
    g.add_argument("--repeats", type=int, default=5)
    g.add_argument("--warmup", type=int, default=1)
    g = p.add_argument_group("part 2, the step")
    g.add_argument("--teacher", default=str(REPO / "assets" / "teacher"))
    g.add_argument("--teacher-layer", type=int, default=6)
    g.add_argument("--student-layers", type=int, default=3)
    g.add_argument("--step-student-width", type=int, default=192)
    g.add_argument("--student-heads", type=int, default=6, help="the student's attention heads")
    g.add_argument("--step-batch", type=int, default=32)
    g.add_argument("--step-seq", type=int, default=128)
    g.add_argument("--step-chunk-sizes", type=lambda s: [parse_chunk(c) for c in s.split(",")], default=[128, None],
                   help="loss variants of ours, e.g. 128,none (none: the reference loss)")
    g.add_argument("--step-repeats", type=int, default=5)
    g.add_argument("--step-warmup", type=int, default=1)
    p.add_argument("--_loss-child", dest="loss_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)

    if args.loss_child is not None:
        print(json.dumps(run_loss(args, parse_chunk(args.loss_child), device)))
        return

    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(device),
               "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}
    lines = [f"# relation_bench: {results['machine']}", "", f"`{results['command']}`, {results['date']}", ""]
    for part, (run, heading, table) in PARTS.items():
        if args.part in (part, "all"):
            results[part] = run(args, device)
            lines += [heading(results[part]["config"]), "", *table(results[part]), ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(results, indent=2) + "\n" if args.out.suffix == ".json" else text
        args.out.write_text(body, encoding="utf-8")


if __name__ == "__main__":
    main()
