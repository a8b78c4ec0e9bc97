#!/usr/bin/env python
"""Long sequences on CPU: the relation loss's peak memory against S, and a whole distillation step up to S = 8192.

    python tools/bench/long_context_bench.py [--seq-len 512 2048 8192] [--out FILE]

Part 1, the relation loss alone (distill.relations.relation_loss, forward + backward, one micro-batch of B = 1,
relations qq,kk,vv, --relation-heads A_r, random teacher Q/K/V of width --teacher-width and student Q/K/V of
width --student-width), at every S:
  - chunked (--chunk-size query rows at a time): memory linear in S, so bytes per token stay about constant;
  - reference ([B, A_r, S, S] matrices under autograd), where RelationSpec.check_memory lets it run, next to
    its estimate RelationSpec.unchunked_bytes = (2 R + 3) float32 [B, A_r, S, S] matrices for R relations;
    at an S where the 16 GiB budget refuses it, the row gives the estimate and the refusal. Also qq alone
    (R = 1), to show the factor follows R. A run the budget allows but over --max-measure-gib (this
    machine's share) is left out and said so.
  - the fused Triton kernel only with --triton-seq (the Triton CPU interpreter takes minutes per call at
    these lengths); it runs on CUDA and is measured by `make gpu-check`.
Peak memory: each case in a fresh process (MALLOC_MMAP_THRESHOLD_=65536 so that freed buffers go back to
the system, OMP_NUM_THREADS=1), one warm-up call at S = 64 first, then VmHWM after
`echo 5 > /proc/self/clear_refs` minus VmRSS before the call: what the call adds on top of its inputs.

Part 2, a whole distillation step per S: a tiny ModernBERT teacher (random init, --teacher-layers layers of
--teacher-width, max_position_embeddings 8192, local attention --local-window, alternating global and local
layers) stopped at its last layer's projections (FrozenTeacher), a student built from it by
distill.student.create_student (as the trainer builds it: from the teacher's weights), MiniLMv2Objective with
the chunked loss: teacher forward, student forward, relation loss, backward (no optimizer step). The input is
the first full window of WindowDataset at that S over real shards: a generated corpus tokenized by a tiny
WordPiece tokenizer, written by distill.shards.write_documents in shards of about S_max / 2 tokens (so the
longest windows cross shard files). One warm-up step at S = 64, then --steps timed steps; peak RSS as above
(absolute, and the rise over the RSS before the step), in a fresh process per S.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
WARMUP_SEQ = 64
WORDS = ("the of and to a in is it you that he was for on are with as his they be at one have this from or had by "
         "word but what some we can out other were all there when up use your how said an each she which do their "
         "time if will way about many then them write would like so these her long make thing see him two has look "
         "more day could go come did number sound no most people my over know water than call first who may down "
         "side been now find any new work part take get place made live where after back little only round man year "
         "came show every good me give our under name very through just form sentence great think say help low line "
         "differ turn cause much mean before move right boy old too same tell does set three want air well").split()
MiB = 2**20


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seq-len", type=int, nargs="+", default=[512, 2048, 8192])
    p.add_argument("--relation-heads", type=int, default=8,
                   help="A_r (8: at B = 1 the reference at S = 8192 needs 18 GiB, over the 16 GiB budget)")
    p.add_argument("--teacher-width", type=int, default=64)
    p.add_argument("--student-width", type=int, default=32)
    p.add_argument("--chunk-size", type=int, default=128)
    p.add_argument("--max-measure-gib", type=float, default=4.0,
                   help="do not run a reference case the budget allows but whose estimate is over this")
    p.add_argument("--triton-seq", type=int, nargs="*", default=[],
                   help="also run the fused kernel in the Triton CPU interpreter at these S (minutes each)")
    p.add_argument("--teacher-layers", type=int, default=3)
    p.add_argument("--student-layers", type=int, default=2)
    p.add_argument("--local-window", type=int, default=128, help="the ModernBERT teacher's local_attention")
    p.add_argument("--steps", type=int, default=1, help="timed distillation steps per S (after one warm-up)")
    p.add_argument("--out", default=None, help="write the Markdown report here")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    return p.parse_args(argv)


# --------------------------------------------------------------------------- measuring (in the child)
def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def measured(fn) -> tuple[object, float, int, int]:
    """(fn(), seconds, peak bytes above the RSS before, peak RSS bytes)."""
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
        f.write("5")
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    return result, seconds, peak - before, peak


def loss_case(case: dict) -> dict:
    import torch

    from distill.relations import RelationSpec, relation_loss

    spec = RelationSpec(case["heads"], case["relations"], case["impl"], case["chunk"])
    gen = torch.Generator().manual_seed(0)

    def inputs(seq):
        teacher = [torch.randn(1, seq, case["teacher_width"], generator=gen) for _ in range(3)]
        student = [torch.randn(1, seq, case["student_width"], generator=gen).requires_grad_() for _ in range(3)]
        return teacher, student, torch.ones(1, seq, dtype=torch.long)

    def call(teacher, student, mask):
        loss, _ = relation_loss(teacher, student, mask, spec)
        loss.backward()
        return loss

    call(*inputs(WARMUP_SEQ))
    args = inputs(case["seq"])
    loss, seconds, rise, _ = measured(lambda: call(*args).item())
    return {"seconds": seconds, "peak_bytes": rise, "loss": loss}


def step_case(case: dict) -> dict:
    import torch
    from torch.utils.data import default_collate
    from transformers import ModernBertConfig, ModernBertModel

    from distill.data import WindowDataset
    from distill.objective import MiniLMv2Objective
    from distill.relations import RelationSpec
    from distill.student import create_student
    from distill.teacher import FrozenTeacher

    info = json.loads((Path(case["shards"]) / "manifest.json").read_text())["tokenizer"]
    torch.manual_seed(0)
    config = ModernBertConfig(
        vocab_size=info["vocab_size"], hidden_size=case["teacher_width"], num_hidden_layers=case["teacher_layers"],
        num_attention_heads=4, intermediate_size=2 * case["teacher_width"], max_position_embeddings=8192,
        local_attention=case["local_window"], pad_token_id=info["pad_token_id"], cls_token_id=info["cls_token_id"],
        sep_token_id=info["sep_token_id"], bos_token_id=info["cls_token_id"], eos_token_id=info["sep_token_id"])
    teacher = FrozenTeacher(ModernBertModel(config), case["teacher_layers"])
    student = create_student(teacher, case["student_layers"], case["student_width"], 2)
    spec = RelationSpec(case["heads"], "qq,kk,vv", "chunked", case["chunk"])
    objective = MiniLMv2Objective(teacher, student, spec, device="cpu")
    student.train()

    def batch_at(seq):
        dataset = WindowDataset(case["shards"], seq)
        batch = default_collate([dataset[0]])
        assert int(batch["attention_mask"].sum()) == seq, "the first window is not full: generate more tokens"
        return batch, len(dataset)

    def step(batch):
        loss, _ = objective(batch)
        loss.backward()
        grads = [p.grad for p in student.parameters() if p.grad is not None]
        ok = bool(torch.isfinite(loss)) and grads and all(bool(torch.isfinite(g).all()) for g in grads)
        student.zero_grad(set_to_none=True)
        if not ok:
            raise SystemExit(f"error: non-finite loss or gradient at S={batch['input_ids'].shape[1]}")
        return loss.item()

    step(batch_at(WARMUP_SEQ)[0])
    batch, windows = batch_at(case["seq"])
    runs = [measured(lambda: step(batch)) for _ in range(case["steps"])]   # (loss, seconds, rise, peak)
    return {"seconds": statistics.median(r[1] for r in runs), "peak_bytes": max(r[2] for r in runs),
            "peak_rss_bytes": max(r[3] for r in runs), "loss": runs[0][0], "windows": windows,
            "layer_types": list(teacher.model.config.layer_types), "student_types": list(student.config.layer_types)}


# --------------------------------------------------------------------------- the cases (in the parent)
def run_case(case: dict, extra_env: dict | None = None) -> dict:
    env = {**os.environ, **ENV, **(extra_env or {})}
    proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: case {case} failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def loss_rows(args) -> list[dict]:
    from distill.relations import RelationSpec

    common = dict(heads=args.relation_heads, teacher_width=args.teacher_width, student_width=args.student_width)
    plan = [("chunked", "qq,kk,vv", s) for s in args.seq_len]
    plan += [("reference", "qq,kk,vv", s) for s in args.seq_len]
    plan += [("reference", "qq", s) for s in args.seq_len]
    plan += [("triton", "qq,kk,vv", s) for s in args.triton_seq]
    rows = []
    for impl, relations, seq in plan:
        chunk = args.chunk_size if impl == "chunked" else None
        spec = RelationSpec(args.relation_heads, relations, impl, chunk)
        row = dict(impl=impl, relations=relations, seq=seq, chunk=chunk, estimate=spec.unchunked_bytes(1, seq),
                   budget="allowed", peak_bytes=None, seconds=None, loss=None)
        try:
            spec.check_memory(1, seq)
        except ValueError as e:
            row["budget"] = "refused"
            row["message"] = str(e)
        too_big = row["estimate"] is not None and row["estimate"] > args.max_measure_gib * 2**30
        if row["budget"] == "allowed" and too_big:
            row["skipped"] = f"not run: estimate over --max-measure-gib {args.max_measure_gib:g}"
        elif row["budget"] == "allowed":
            env = {"TRITON_INTERPRET": "1"} if impl == "triton" else None
            row.update(run_case(dict(kind="loss", impl=impl, relations=relations, seq=seq, chunk=chunk, **common),
                                env))
        rows.append(row)
        print(format_loss_row(row, args), flush=True)
    return rows


def write_shards(directory: Path, tokens_needed: int, shard_tokens: int) -> dict:
    """A generated corpus tokenized by a tiny WordPiece tokenizer, written as a shard directory."""
    from transformers import BertTokenizerFast

    from distill.pretokenize.encoding import describe_tokenizer
    from distill.shards import write_documents

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'-")
    vocab = list(dict.fromkeys(specials + sorted(set(WORDS)) + pieces))
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True, model_max_length=8192)
    tok.save_pretrained(directory / "tokenizer")
    rng = random.Random(0)
    docs, total = [], 0
    while total < tokens_needed:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 400))) + "."
        ids = tok(text, add_special_tokens=False)["input_ids"]
        docs.append(ids)
        total += len(ids) + 1
    info = describe_tokenizer(tok, str(directory / "tokenizer")).info
    return write_documents(directory / "shards", docs, tokenizer=info, shard_tokens=shard_tokens)


def step_rows(args) -> tuple[list[dict], dict]:
    with tempfile.TemporaryDirectory(prefix="long_context_bench_") as tmp:
        manifest = write_shards(Path(tmp), 2 * max(args.seq_len), max(args.seq_len) // 2)
        rows = []
        for seq in args.seq_len:
            case = dict(kind="step", seq=seq, shards=str(Path(tmp) / "shards"), heads=args.relation_heads,
                        chunk=args.chunk_size, teacher_width=args.teacher_width, student_width=args.student_width,
                        teacher_layers=args.teacher_layers, student_layers=args.student_layers,
                        local_window=args.local_window, steps=args.steps)
            row = dict(seq=seq, **run_case(case))
            rows.append(row)
            print(format_step_row(row), flush=True)
    shards = dict(tokens=manifest["total_tokens"], documents=manifest["total_documents"],
                  files=len(manifest["shards"]))
    return rows, shards


# --------------------------------------------------------------------------- the report
def mib(value) -> str:
    return "-" if value is None else f"{value / MiB:,.1f}"


def format_loss_row(r: dict, args) -> str:
    matrix = args.relation_heads * r["seq"] ** 2 * 4  # one float32 [1, A_r, S, S]
    name = f"{r['impl']} (chunk {r['chunk']})" if r["chunk"] else r["impl"]
    if r["peak_bytes"] is not None:
        measured_text = mib(r["peak_bytes"])
        matrices = f"{r['peak_bytes'] / matrix:.2f}"
        per_token = f"{r['peak_bytes'] / r['seq'] / 1024:,.2f}"
        vs = f"{r['peak_bytes'] / r['estimate']:.3f}" if r["estimate"] else "-"
        seconds = f"{r['seconds']:.2f}"
    else:
        measured_text = r.get("skipped") or "refused by check_memory"
        matrices = per_token = vs = seconds = "-"
    estimate = mib(r["estimate"]) if r["estimate"] is not None else "- (linear in S)"
    budget = r["budget"] if r["estimate"] is not None else "allowed (linear in S)"
    return (f"| {name} | {r['relations']} | {r['seq']} | {measured_text} | {estimate} | {vs} | {matrices} | "
            f"{per_token} | {budget} | {seconds} |")


def format_step_row(r: dict) -> str:
    return (f"| {r['seq']} | {r['windows']} | {r['seconds']:.2f} | {r['seq'] / r['seconds']:,.0f} | "
            f"{mib(r['peak_rss_bytes'])} | {mib(r['peak_bytes'])} | {r['loss']:.4e} |")


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {cores} cores, {memory:.0f} GiB RAM; {platform.system()} {platform.release()}"


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


def report(args, loss, steps, shards, seconds: float, load: tuple[str, str]) -> str:
    import torch
    import transformers

    from distill.relations import UNCHUNKED_BUDGET_BYTES

    chunked = {r["seq"]: r["peak_bytes"] for r in loss if r["impl"] == "chunked" and r["peak_bytes"]}
    lo, hi = min(chunked), max(chunked)
    growth = chunked[hi] / chunked[lo]
    checked = [r for r in loss if r["impl"] == "reference" and r["peak_bytes"]]
    refused = [r for r in loss if r["budget"] == "refused"]
    ratios = ", ".join(f"{r['relations']} at {r['seq']}: {r['peak_bytes'] / r['estimate']:.3f}" for r in checked)
    lines = [
        "# long_context_bench: the relation loss's memory against S, and a distillation step up to "
        f"S = {max(args.seq_len)} (CPU)",
        "",
        f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}; machine: {machine()}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        f"- settings: each case in a fresh process, MALLOC_MMAP_THRESHOLD_={ENV['MALLOC_MMAP_THRESHOLD_']} "
        f"OMP_NUM_THREADS={ENV['OMP_NUM_THREADS']}; "
        f"a warm-up call at S = {WARMUP_SEQ} first; peak = VmHWM after `echo 5 > /proc/self/clear_refs` minus VmRSS "
        "before the call (what the call adds on top of its inputs)",
        f"- command: python {' '.join(sys.argv)}; {seconds:.0f} s in all",
        f"- load average (1 min) at the start / end: {load[0]} / {load[1]} (on a shared machine the times vary with "
        "it; the memory figures do not)",
        "",
        f"## Part 1: relation loss, forward + backward; B = 1, A_r = {args.relation_heads}, teacher width "
        f"{args.teacher_width}, student width {args.student_width}, float32",
        "",
        "Estimate: `RelationSpec.unchunked_bytes` = (2 R + 3) float32 [B, A_r, S, S] matrices for R relations, "
        f"refused by `check_memory` above its budget of {UNCHUNKED_BUDGET_BYTES / 2**30:.0f} GiB. Matrices: the "
        "measured peak in units of one float32 [B, A_r, S, S].",
        "",
        "| loss | relations | S | measured peak MiB | estimate MiB | measured / estimate | [B, A_r, S, S] matrices "
        "| KiB per token | check_memory | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
        *[format_loss_row(r, args) for r in loss],
        "",
        f"- chunked: {mib(chunked[lo])} MiB at S = {lo}, {mib(chunked[hi])} MiB at S = {hi}: x{growth:.1f} for "
        f"x{hi // lo} the tokens (linear: x{hi // lo}; an S x S loss: x{(hi // lo) ** 2}); "
        f"{chunked[lo] / lo / 1024:.1f} to {chunked[hi] / hi / 1024:.1f} KiB per token",
        f"- reference, measured / estimate: {ratios or '-'} (the (2 R + 3) factor: 9 matrices for qq,kk,vv, "
        "5 for qq alone)",
        *[f"- refused at S = {r['seq']} ({r['relations']}): \"{r['message']}\"" for r in refused],
    ]
    if not args.triton_seq:
        lines.append("- fused Triton kernel: not measured here (the Triton CPU interpreter takes minutes per call at "
                     "S >= 512; `--triton-seq S` runs it); it runs on CUDA and is measured by `make gpu-check`")
    types = steps[0]["layer_types"] if steps else []
    lines += [
        "",
        f"## Part 2: one distillation step; tiny ModernBERT teacher ({args.teacher_layers} layers x "
        f"{args.teacher_width}, 4 heads, max_position_embeddings 8192, local_attention {args.local_window}, layers "
        f"{', '.join(types)}) -> student by create_student ({args.student_layers} layers x {args.student_width}, 2 "
        f"heads, layers {', '.join(steps[0]['student_types']) if steps else '-'}); MiniLMv2Objective, chunked loss "
        f"(chunk {args.chunk_size}), A_r = {args.relation_heads}, qq,kk,vv; B = 1",
        "",
        f"Input: the first window of `WindowDataset(shards, S)`, shards of {shards['tokens']:,} tokens "
        f"({shards['documents']} generated documents, tiny WordPiece tokenizer, {shards['files']} shard file(s), "
        "distill.shards.write_documents). Step: teacher forward (stopped at its projections), student forward, "
        f"relation loss, backward; no optimizer step. Median of {args.steps} timed step(s) after one warm-up "
        f"at S = {WARMUP_SEQ}.",
        "",
        "| S | windows at S | seconds / step | tokens/s | peak RSS MiB | step's rise over RSS before MiB | loss |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *[format_step_row(r) for r in steps],
        "",
        "The step's rise holds the models' own activations and attention (transformers' sdpa on CPU) as well as the "
        "relation loss (part 1 gives the loss alone at the same A_r and widths).",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.case is not None:
        case = json.loads(args.case)
        result = loss_case(case) if case["kind"] == "loss" else step_case(case)
        print(json.dumps(result))
        return 0
    if not os.path.exists("/proc/self/clear_refs"):
        raise SystemExit("error: this benchmark reads /proc/self (Linux only)")
    start, load = time.perf_counter(), load_average()
    loss = loss_rows(args)
    steps, shards = step_rows(args)
    text = report(args, loss, steps, shards, time.perf_counter() - start, (load, load_average()))
    print(text)
    if args.out:
        from distill.io import atomic_write_bytes

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out, [text.encode()])
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
