#!/usr/bin/env python
"""Throughput and memory of distill.pretokenize against the usual way and the tokenizer's ceiling.

    python tools/bench/pretokenize_bench.py [--size-mb 100] [--corpus FILE ...] [--rounds 2] [--out FILE]

On one corpus, each method in a fresh subprocess, all cores:
  1. distill.pretokenize: reading, worker processes, uint16 shards (the build() call, timed whole)
  2. datasets: load_dataset("text", sample_by="paragraph") -> map(tokenizer, batched=True,
     num_proc=cores) -> save_to_disk, how published distillers prepare data (Arrow, int32 lists)
  3. the ceiling: the Rust tokenizer's own batch encoding (Rayon threads on all cores) over the
     documents already in memory; reading them is not timed. encode_batch, and encode_batch_fast
     (ids without offsets, what pretokenize uses): the faster of the two is the ceiling.
Tokens are content tokens (no SEP, no special tokens), counted the same way for every method.
Peak memory is the RSS of the whole process tree (the method's process and all its children),
sampled every 50 ms; forked children (datasets' num_proc) count pages they share with their parent.

On shared machines: before each method the bench waits (--quiet-wait) for other processes to
leave the cores idle, records how many cores they used while the method ran ("others' CPU"),
and reports tokens per CPU-second next to tokens per second; with --rounds N it runs the
methods interleaved N times and reports each method's fastest round.

The default corpus is the offline corpus (assets/corpus: State of the Union, Brown, review texts)
repeated to --size-mb, written as .txt files of documents separated by blank lines.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # for the default assets

METHODS = {
    "pretokenize": "1. tools/pretokenize.py",
    "datasets_map": "2. datasets.map(num_proc) -> save_to_disk",
    "encode_batch": "3a. ceiling: Tokenizer.encode_batch",
    "encode_batch_fast": "3b. ceiling: Tokenizer.encode_batch_fast",
}
CEILINGS = ("encode_batch", "encode_batch_fast")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- the corpus
def offline_documents(assets: Path) -> list[str]:
    corpus = assets / "corpus"
    if not corpus.is_dir():
        sys.exit(f"error: the offline corpus is not under {corpus}: "
                 "run `bash tools/fetch_offline_assets.sh`, or pass --corpus")
    docs = [f.read_text(encoding="utf-8", errors="replace") for f in sorted((corpus / "sotu").glob("*.txt"))]
    for f in sorted((corpus / "brown").glob("*.txt")):
        docs += re.split(r"\n\s*\n", f.read_text(encoding="utf-8", errors="replace"))
    if (corpus / "reviews.jsonl").is_file():
        with open(corpus / "reviews.jsonl", encoding="utf-8") as f:
            docs += [json.loads(line).get("text") or "" for line in f if line.strip()]
    # One document stays one document in every method: no blank line inside it.
    return [re.sub(r"\n\s*\n", "\n", d).strip() for d in docs if d.strip()]


def build_corpus(directory: Path, size_mb: float, assets: Path) -> list[Path]:
    """The offline documents, repeated, in .txt files of <= 16 MB until size_mb is reached."""
    docs = offline_documents(assets)
    target, written, files = int(size_mb * 2**20), 0, []
    i = 0
    while written < target:
        path = directory / f"part-{len(files):05d}.txt"
        size = 0
        with open(path, "w", encoding="utf-8") as f:
            while size < 16 * 2**20 and written + size < target:
                data = docs[i % len(docs)] + "\n\n"
                f.write(data)
                size += len(data.encode("utf-8"))
                i += 1
        files.append(path)
        written += size
    return files


# --------------------------------------------------------------------------- methods (run in a child)
def run_pretokenize(files: list[Path], work: Path, tokenizer: str, workers: int) -> dict:
    import numpy as np

    import distill.pretokenize as P

    t0, c0 = time.perf_counter(), cpu_seconds()
    m = P.build(tokenizer=tokenizer, inputs=[str(f) for f in files], output=str(work / "shards"), num_workers=workers,
                show_progress=False, log=lambda s: None, command=["bench"]).manifest
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    shard_bytes = sum((work / "shards" / e["file"]).stat().st_size for e in m["shards"])
    return {"seconds": seconds, "cpu_seconds": cpu, "tokens": m["total_tokens"] - m["total_documents"],
            "documents": m["total_documents"],
            "disk_bytes": shard_bytes, "bytes_per_token": shard_bytes / m["total_tokens"],
            "disk_note": f"{np.dtype(m['dtype']).itemsize}-byte ids + 1 SEP per document"}


def run_datasets_map(files: list[Path], work: Path, tokenizer: str, workers: int) -> dict:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # num_proc is the parallelism: its best setting on N cores
    import datasets
    import pyarrow.compute as pc
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(tokenizer)
    t0, c0 = time.perf_counter(), cpu_seconds()
    ds = datasets.load_dataset("text", data_files=[str(f) for f in files], sample_by="paragraph", split="train",
                               cache_dir=str(work / "cache"))

    def tokenize(batch):
        return {"input_ids": tok(batch["text"], add_special_tokens=False, return_attention_mask=False,
                                 return_token_type_ids=False)["input_ids"]}

    ds = ds.map(tokenize, batched=True, num_proc=workers, remove_columns=["text"])
    ds.save_to_disk(str(work / "arrow"))
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    saved = datasets.load_from_disk(str(work / "arrow"))
    tokens = int(pc.sum(pc.list_value_length(saved.data.column("input_ids"))).as_py())
    disk = sum(p.stat().st_size for p in (work / "arrow").rglob("*.arrow"))
    return {"seconds": seconds, "cpu_seconds": cpu, "tokens": tokens, "documents": len(saved), "disk_bytes": disk,
            "bytes_per_token": disk / tokens, "disk_note": f"Arrow list<{saved.features['input_ids'].feature.dtype}>"}


def run_ceiling(files: list[Path], work: Path, tokenizer: str, workers: int, fast: bool) -> dict:
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    os.environ["RAYON_NUM_THREADS"] = str(workers)
    from tokenizers import Tokenizer

    import distill.pretokenize as P

    spec = P.load_tokenizer(tokenizer)  # the same backend as pretokenize: truncation and padding off
    tok = Tokenizer.from_str(spec.json)
    tok.encode_special_tokens = True
    sources = P.resolve_inputs([str(f) for f in files])
    docs = [d for d in P.DocumentReader(sources, "text") if d.strip()]  # in memory before timing
    encode = tok.encode_batch_fast if fast else tok.encode_batch
    batch = 2048
    t0, c0 = time.perf_counter(), cpu_seconds()
    tokens = 0
    for i in range(0, len(docs), batch):
        tokens += sum(len(e) for e in encode(docs[i:i + batch], add_special_tokens=False))
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return {"seconds": seconds, "cpu_seconds": cpu, "tokens": tokens, "documents": len(docs)}


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its children that have exited."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (all processes, all cores), steal included."""
    import psutil

    t = psutil.cpu_times()
    return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))


def child(method: str, files: list[Path], work: Path, tokenizer: str, workers: int, result: Path) -> None:
    from transformers import AutoTokenizer  # noqa: F401  imported before timing, for every method alike

    busy0, cpu0 = machine_busy_seconds(), cpu_seconds()
    if method == "pretokenize":
        r = run_pretokenize(files, work, tokenizer, workers)
    elif method == "datasets_map":
        r = run_datasets_map(files, work, tokenizer, workers)
    else:
        r = run_ceiling(files, work, tokenizer, workers, fast=method == "encode_batch_fast")
    # Other processes' CPU while this ran, in cores: how contended the measurement was. (Measured
    # over the whole child after imports, which brackets the timed part.)
    r["others_cores"] = max(0.0, machine_busy_seconds() - busy0 - (cpu_seconds() - cpu0)) / r["seconds"]
    result.write_text(json.dumps(r))


# --------------------------------------------------------------------------- the parent: run and measure
def tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def wait_for_quiet(max_wait: float, threshold_cores: float = 0.3) -> float:
    """Wait (up to max_wait s) for 2 s in which other processes use under threshold_cores; return the wait."""
    import psutil

    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait:
        if psutil.cpu_percent(interval=2.0) / 100 * psutil.cpu_count() < threshold_cores:
            break
    return time.monotonic() - t0


def measure(method: str, files: list[Path], tokenizer: str, workers: int, scratch: Path, quiet_wait: float) -> dict:
    import psutil

    waited = wait_for_quiet(quiet_wait)
    work = Path(tempfile.mkdtemp(prefix=f"{method}-", dir=scratch))
    result = work / "result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, "--work", str(work),
           "--tokenizer", tokenizer,
           "--workers", str(workers), "--result", str(result), "--corpus", *map(str, files)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    peak, stop = 0, threading.Event()
    proc = psutil.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(proc))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0 or not result.is_file():
        sys.exit(f"error: method {method} failed (exit {proc.returncode}):\n{output[-4000:]}")
    r = json.loads(result.read_text())
    r.update(method=method, peak_rss=peak, tokens_per_s=r["tokens"] / r["seconds"],
             tokens_per_cpu_s=r["tokens"] / r["cpu_seconds"], waited=waited)
    shutil.rmtree(work, ignore_errors=True)
    return r


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(best: dict, rounds: list[list[dict]], corpus_bytes: int, files: list[Path], tokenizer: str,
          workers: int) -> str:
    import datasets
    import tokenizers
    import transformers

    ref_map = best["datasets_map"]["tokens_per_s"]
    ceiling_method = max(CEILINGS, key=lambda k: best[k]["tokens_per_s"])
    ceiling = best[ceiling_method]["tokens_per_s"]
    lines = [
        "# pretokenize benchmark (CPU)",
        "",
        f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}; machine: {cpu_name()}, "
        f"{cores()} cores available, {workers} used; {platform.system()} {platform.release()}",
        f"- corpus: {corpus_bytes / 2**20:.1f} MiB in {len(files)} .txt files, "
        f"{best['pretokenize']['documents']:,} documents; tokenizer: {tokenizer}",
        f"- versions: python {platform.python_version()}, tokenizers {tokenizers.__version__}, "
        f"transformers {transformers.__version__}, datasets {datasets.__version__}",
        f"- {len(rounds)} round(s), methods interleaved, each in a fresh process; the table shows each method's "
        "fastest round (all rounds below)",
        "",
        "| method | tokens | seconds | tokens/s | vs datasets.map | vs ceiling | CPU s (tree) | tokens/CPU-s "
        "| others' CPU | peak RSS (process tree) | on disk |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, label in METHODS.items():
        r = best[key]
        disk = f"{r['bytes_per_token']:.2f} B/token ({r['disk_note']})" if "bytes_per_token" in r else "-"
        lines.append(f"| {label} | {r['tokens']:,} | {r['seconds']:.1f} | {r['tokens_per_s'] / 1e6:.2f} M | "
                     f"{r['tokens_per_s'] / ref_map:.2f}x | {100 * r['tokens_per_s'] / ceiling:.0f}% | "
                     f"{r['cpu_seconds']:.1f} | {r['tokens_per_cpu_s'] / 1e6:.2f} M | {r['others_cores']:.2f} cores | "
                     f"{r['peak_rss'] / 2**20:,.0f} MiB | {disk} |")
    p = best["pretokenize"]
    checks = [
        ("tokens/s >= 1.2x datasets.map", p["tokens_per_s"] / ref_map >= 1.2, f"{p['tokens_per_s'] / ref_map:.2f}x"),
        (f"tokens/s >= 80% of the ceiling ({METHODS[ceiling_method]})", p["tokens_per_s"] / ceiling >= 0.8,
         f"{100 * p['tokens_per_s'] / ceiling:.0f}%"),
        ("peak memory < 1.5 GB", p["peak_rss"] < 1.5e9, f"{p['peak_rss'] / 2**20:,.0f} MiB"),
        ("2 bytes per token on disk", abs(p["bytes_per_token"] - 2.0) < 1e-9, f"{p['bytes_per_token']:.2f}"),
    ]
    lines += ["", "Targets for (1):", ""]
    lines += [f"- [{'x' if ok else ' '}] {name}: {value}" for name, ok, value in checks]
    lines += ["", "\"others' CPU\": cores used by other processes on this (shared) machine while the method ran; "
              "tokens/CPU-s is the least sensitive to it.", "",
              "All rounds (tokens/s, tokens/CPU-s, others' CPU in cores, peak RSS):", ""]
    for i, rnd in enumerate(rounds, 1):
        lines.append(f"- round {i}: " + "; ".join(
            f"{r['method']} {r['tokens_per_s'] / 1e6:.2f} M/s, {r['tokens_per_cpu_s'] / 1e6:.2f} M/CPU-s, "
            f"others {r['others_cores']:.2f}, {r['peak_rss'] / 2**20:,.0f} MiB" for r in rnd))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", nargs="+", metavar="FILE",
                   help="text files to use (default: the offline corpus, repeated)")
    p.add_argument("--size-mb", type=float, default=100, help="size of the default corpus in MiB (default: 100)")
    p.add_argument("--tokenizer", default=str(REPO / "assets" / "teacher"),
                   help="tokenizer (default: the offline teacher)")
    p.add_argument("--workers", type=int, default=cores(),
                   help="processes / threads for every method (default: all cores)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every method this many times, interleaved; report the fastest")
    p.add_argument("--quiet-wait", type=float, default=60, metavar="S",
                   help="before each method, wait up to S seconds for other processes to leave the cores idle "
                        "(default: 60)")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS), help=argparse.SUPPRESS)
    p.add_argument("--out", help="also write the Markdown table to this file")
    p.add_argument("--child", choices=list(METHODS), help=argparse.SUPPRESS)  # internal: run one method here
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, [Path(f) for f in args.corpus], Path(args.work), args.tokenizer, args.workers,
              Path(args.result))
        return 0
    try:
        import psutil  # noqa: F401
    except ImportError:
        sys.exit("error: the benchmark samples memory with psutil: pip install psutil")

    with tempfile.TemporaryDirectory(prefix="pretokenize-bench-") as scratch:
        scratch = Path(scratch)
        if args.corpus:
            files = [Path(f).resolve() for f in args.corpus]
        else:
            (scratch / "corpus").mkdir()
            files = build_corpus(scratch / "corpus", args.size_mb, REPO / "assets")
        corpus_bytes = sum(f.stat().st_size for f in files)
        print(f"corpus: {corpus_bytes / 2**20:.1f} MiB in {len(files)} files; {args.workers} workers", file=sys.stderr)
        rounds = []
        for i in range(args.rounds):
            rnd = []
            for method in args.methods:
                r = measure(method, files, args.tokenizer, args.workers, scratch, args.quiet_wait)
                print(f"round {i + 1}: {method}: {r['tokens']:,} tokens in {r['seconds']:.1f} s = "
                      f"{r['tokens_per_s'] / 1e6:.2f} M tokens/s ({r['tokens_per_cpu_s'] / 1e6:.2f} M/CPU-s), peak RSS "
                      f"{r['peak_rss'] / 2**20:,.0f} MiB; others used {r['others_cores']:.2f} cores (waited "
                      f"{r['waited']:.0f} s for quiet)", file=sys.stderr)
                rnd.append(r)
            rounds.append(rnd)
    best = {m: max((r for rnd in rounds for r in rnd if r["method"] == m), key=lambda r: r["tokens_per_s"])
            for m in args.methods}
    if set(best) != set(METHODS):
        print(json.dumps(best, indent=1))
        return 0
    text = table(best, rounds, corpus_bytes, files, args.tokenizer, args.workers)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
