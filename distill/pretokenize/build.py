"""The resumable build, in named steps: plan (check settings, inputs and tokenizer), prepare the
output directory (start, resume, nothing to do, or refuse), tokenize into shards, finalize the
manifest. `build` runs them; `summary` says what a build did."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .. import shards as S
from ..io import atomic_write_json, fsync_dir
from ..locks import DirectoryLock, LockedError
from ..paths import is_no_space, no_space_message, output_dir_problem
from .encoding import TokenizerSpec, default_num_workers, encode_stream, load_tokenizer
from .errors import PretokenizeError
from .inputs import (
    DEFAULT_MAX_DOC_CHARS,
    DocumentReader,
    Source,
    describe_sources,
    hub_source,
    preflight,
    resolve_inputs,
)
from .output import PROGRESS_NAME, OutputState, prepare_output, remove_trace, remove_unrecorded_shards

DEFAULT_SHARD_TOKENS = 2**27  # 134M tokens: 256 MiB per uint16 shard, a resume point every few minutes
DEFAULT_BATCH_CHARS = 1 << 19  # text per task sent to a worker: ~0.1 s of work, IPC cost negligible at this size


@dataclass
class BuildResult:
    manifest: dict
    already_complete: bool = False
    session_tokens: int = 0  # tokenized by this run (a resumed run skips the finished shards)
    session_seconds: float = 0.0
    num_workers: int = 1


@dataclass
class Plan:
    """What a build reads and how: checked before the output directory is touched."""

    sources: list[Source]
    tokenizer: TokenizerSpec
    dtype: str
    text_field: str
    shard_tokens: int
    batch_chars: int
    num_workers: int
    record: dict  # what identifies the build: dtype, tokenizer, inputs, text_field, shard_tokens, max_doc_chars
    from_dataset: bool = False
    max_doc_chars: int = DEFAULT_MAX_DOC_CHARS

    @property
    def total_bytes(self) -> int:  # of the inputs, for the progress bar; 0 for a streamed dataset
        return sum(s.size for s in self.sources)


def _check_settings(num_workers: int, shard_tokens: int, batch_chars: int, max_doc_chars: int, inputs,
                    dataset) -> None:
    if num_workers < 1:
        raise PretokenizeError(f"--num-workers must be at least 1, got {num_workers}")
    if shard_tokens < 1 or batch_chars < 1 or max_doc_chars < 1:
        raise PretokenizeError(f"--shard-tokens, --batch-chars and --max-doc-chars must be at least 1, got "
                               f"{shard_tokens}, {batch_chars} and {max_doc_chars}")
    if bool(inputs) == bool(dataset):
        raise PretokenizeError("give either --input PATH [PATH ...] or --dataset NAME --split SPLIT (one of the two)")


def _check_dtype(spec: TokenizerSpec, dtype: str, log: Callable[[str], None]) -> None:
    """Refuse a dtype the ids do not fit; say so when uint32 is asked for or needed."""
    try:
        np_dtype = S.dtype_for_vocab(spec.max_id + 1, dtype)
    except S.ShardError as e:
        raise PretokenizeError(str(e)) from e
    if dtype != "uint16":
        fits = spec.max_id <= np.iinfo(np.uint16).max
        log(f"note: writing {dtype} shards ({np_dtype.itemsize} bytes per token)"
            + (" as asked; this tokenizer's ids also fit uint16 (2 bytes per token)" if fits
               else f": the tokenizer's ids go up to {spec.max_id}, beyond uint16"))


def plan_build(*, tokenizer: str, inputs: list[str] | None, dataset: str | None, dataset_config: str | None,
         split: str | None, text_field: str, num_workers: int | None, shard_tokens: int, dtype: str,
         batch_chars: int, log: Callable[[str], None], max_doc_chars: int = DEFAULT_MAX_DOC_CHARS) -> Plan:
    """Step 1: settings, inputs (every file opened) and tokenizer checked; nothing written yet."""
    num_workers = default_num_workers() if num_workers is None else int(num_workers)
    _check_settings(num_workers, shard_tokens, batch_chars, max_doc_chars, inputs, dataset)
    sources = [hub_source(dataset, dataset_config, split)] if dataset else resolve_inputs(inputs, split)
    preflight(sources, text_field)
    spec = load_tokenizer(tokenizer)
    _check_dtype(spec, dtype, log)
    record = {"dtype": dtype, "tokenizer": spec.info, "inputs": [s.identity for s in sources],
              "text_field": text_field, "shard_tokens": int(shard_tokens), "max_doc_chars": int(max_doc_chars)}
    return Plan(sources, spec, dtype, text_field, int(shard_tokens), int(batch_chars), num_workers, record,
                from_dataset=bool(dataset), max_doc_chars=int(max_doc_chars))


def _progress_bar(total_bytes: int, show: bool):
    """Bytes of the inputs read when their size is known, else documents tokenized."""
    from tqdm.auto import tqdm

    return tqdm(total=total_bytes or None, unit="B" if total_bytes else "doc", unit_scale=True,
                unit_divisor=1024 if total_bytes else 1000, desc="pretokenize", file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5, disable=not show)


class Tokenization:
    """Step 3: read -> tokenize in workers -> cut into shards, each shard recorded in the progress file.

    A resumed run reads the documents its finished shards consumed (to keep the order) without
    tokenizing them, and numbers its shards after them.
    """

    def __init__(self, plan: Plan, out: Path, state: OutputState, show_progress: bool):
        self.plan, self.out, self.state = plan, out, state
        self.progress, self.progress_path = state.progress, out / PROGRESS_NAME
        self.documents_read = self.empty_documents = self.tokens = 0
        self.start = time.perf_counter()
        self.prior_seconds = float(self.progress.get("elapsed_seconds", 0.0))  # of the runs this one resumes
        self.bar = _progress_bar(plan.total_bytes, show_progress)
        self._last_bytes = 0
        self.reader = DocumentReader(plan.sources, plan.text_field, self._on_read, plan.max_doc_chars)
        self.writer = S.ShardWriter(out, plan.dtype, plan.shard_tokens, len(self.progress["shards"]), self._on_shard)

    def elapsed(self) -> float:
        """Seconds of this run."""
        return time.perf_counter() - self.start

    def _on_read(self, position: int) -> None:
        if self.plan.total_bytes:
            self.bar.update(position - self._last_bytes)
            self._last_bytes = position

    def _on_shard(self, entry: dict, consumed: int) -> None:
        progress = self.progress
        progress["shards"].append(entry)
        progress["consumed_documents"] = consumed
        progress["documents_without_tokens"] += self.writer.documents_without_tokens
        self.writer.documents_without_tokens = 0
        progress["elapsed_seconds"] = self.prior_seconds + self.elapsed()
        atomic_write_json(self.progress_path, progress)

    def batches(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """(texts, their positions in the document stream): about batch_chars characters each."""
        skip = self.progress["consumed_documents"]
        texts, index, chars, i = [], [], 0, -1
        for i, text in enumerate(self.reader):
            if not text or text.isspace():
                self.empty_documents += 1
                continue
            if i < skip:
                continue  # in a finished shard: read (to keep the order), not tokenized
            texts.append(text)
            index.append(i)
            chars += len(text)
            if chars >= self.plan.batch_chars:
                yield texts, np.asarray(index, dtype=np.int64)
                texts, index, chars = [], [], 0
        self.documents_read = i + 1
        if i + 1 < skip:
            raise PretokenizeError(f"the inputs hold {i + 1} documents, fewer than the {skip} the finished shards "
                                   "consumed: they changed; pass --overwrite to rebuild")
        if texts:
            yield texts, np.asarray(index, dtype=np.int64)

    def _tokenize(self) -> None:
        last_postfix = 0.0
        stream = encode_stream(self.batches(), self.plan.tokenizer, self.plan.dtype, self.plan.num_workers)
        for stream_index, ids, lens in stream:
            self.writer.add(ids, lens, stream_index)
            self.tokens += int(ids.size)
            if not self.plan.total_bytes:
                self.bar.update(int(lens.size))
            now = time.perf_counter()
            if now - last_postfix > 1.0:
                rate = self.tokens / max(now - self.start, 1e-9)
                self.bar.set_postfix_str(f"{rate / 1e6:.2f}M tok/s, {self.writer.index} shards", refresh=False)
                last_postfix = now
        self.writer.finish(consumed=self.documents_read)

    def run(self) -> None:
        """Tokenize everything; on failure the shard being written goes, the finished ones stay (`build`
        removes the rest of a build that finished none)."""
        try:
            self._tokenize()
        except BaseException:
            self.writer.abandon()
            raise
        finally:
            self.bar.close()
        self.progress["documents_without_tokens"] += self.writer.documents_without_tokens
        if not self.progress["shards"]:
            raise self._nothing_to_tokenize()

    def _nothing_to_tokenize(self) -> PretokenizeError:
        read = self.documents_read
        where = describe_sources(self.plan.sources)
        if read == 0:
            return PretokenizeError(f"no text in {where}: the inputs hold no documents; give a corpus with text")
        has_txt = any(fmt == "txt" for s in self.plan.sources for _, fmt in s.files)
        hint = ("" if self.plan.from_dataset or has_txt
                else f" (is --text-field {self.plan.text_field!r} the right field?)")
        return PretokenizeError(f"no text in {where}: all {read} documents of the inputs are empty, "
                                f"whitespace-only or produce no tokens{hint}")


def finalize(run: Tokenization, command: list[str]) -> dict:
    """Step 4: the manifest, last; then the progress file goes."""
    out, plan, progress = run.out, run.plan, run.progress
    entries = progress["shards"]
    remove_unrecorded_shards(out, len(entries))
    stats = {
        "documents_read": run.documents_read,
        "empty_documents_skipped": run.empty_documents,
        "documents_without_tokens_skipped": progress["documents_without_tokens"],
        "replaced_bytes": {label: c.count for label, c in run.reader.replaced.items()},
        "input_bytes": plan.total_bytes,
        "ignored_files": {s.label: len(s.ignored) for s in plan.sources if s.ignored},
    }
    manifest = S.build_manifest(
        plan.dtype, plan.tokenizer.info, entries, inputs=plan.record["inputs"], text_field=plan.text_field,
        shard_tokens=plan.shard_tokens, max_doc_chars=plan.max_doc_chars, stats=stats, command=list(command),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        elapsed_seconds=round(run.prior_seconds + run.elapsed(), 3),
    )
    S.write_manifest(out, manifest)
    run.progress_path.unlink()
    fsync_dir(out)
    return manifest


def build(*, tokenizer: str, output: str, inputs: list[str] | None = None, dataset: str | None = None,
          dataset_config: str | None = None, split: str | None = None, text_field: str = "text",
          num_workers: int | None = None, shard_tokens: int = DEFAULT_SHARD_TOKENS, dtype: str = "uint16",
          overwrite: bool = False, batch_chars: int = DEFAULT_BATCH_CHARS, command: list[str] | None = None,
          log: Callable[[str], None] = print, show_progress: bool = True,
          max_doc_chars: int = DEFAULT_MAX_DOC_CHARS) -> BuildResult:
    """Tokenize `inputs` (or the hub `dataset`) into a shard directory, as cli.py's docstring describes.

    Whatever stops it (an error, Ctrl-C), a build that finished no shard leaves nothing behind (its
    progress file, and the directory if it made it, are removed); finished shards stay, to resume.
    """
    if not str(output).strip():
        raise PretokenizeError("--output_dir is empty: give the directory to write the shards in "
                               "(e.g. --output_dir shards/)")
    problem = output_dir_problem(output, "--output_dir")  # first: before the inputs or the tokenizer are read
    if problem:
        raise PretokenizeError(problem)
    lock = DirectoryLock(output, "pretokenize build")
    try:
        lock.check_free()  # another build writing there is named before anything is read
    except LockedError as e:
        raise PretokenizeError(str(e)) from e
    plan = plan_build(tokenizer=tokenizer, inputs=inputs, dataset=dataset, dataset_config=dataset_config,
                      split=split, text_field=text_field, num_workers=num_workers, shard_tokens=shard_tokens,
                      dtype=dtype, batch_chars=batch_chars, log=log, max_doc_chars=max_doc_chars)
    out = Path(output)
    created, had_progress, state = not out.exists(), (out / PROGRESS_NAME).exists(), None
    try:
        try:
            lock.acquire()  # held to the end: a second build into `out` (--overwrite too) is refused
        except LockedError as e:
            raise PretokenizeError(str(e)) from e
        if lock.recovered_line():
            log(lock.recovered_line())
        state = prepare_output(out, plan.record, overwrite)  # step 2
        state.created_dir = state.created_dir or created  # the lock made the directory: still ours to remove
        if state.complete is not None:
            return BuildResult(state.complete, already_complete=True, num_workers=plan.num_workers)
        progress = state.progress
        if progress["shards"]:
            log(f"resuming: {len(progress['shards'])} finished shards "
                f"({sum(e['num_tokens'] for e in progress['shards']):,} tokens) kept, "
                f"skipping their {progress['consumed_documents']:,} documents")
        run = Tokenization(plan, out, state, show_progress)
        run.run()
        session_seconds = run.elapsed()
        manifest = finalize(run, command if command is not None else sys.argv)
    except BaseException as e:
        lock.release()  # its file first, so that a directory this build made can go
        _leave_no_trace(out, state, created, had_progress)
        if isinstance(e, OSError) and is_no_space(e):
            raise PretokenizeError(no_space_message(str(out), e, _kept(out))) from e
        raise
    finally:
        lock.release()
    return BuildResult(manifest, session_tokens=run.tokens, session_seconds=session_seconds,
                       num_workers=plan.num_workers)


def _leave_no_trace(out: Path, state: OutputState | None, created: bool, had_progress: bool) -> None:
    """After a failed or interrupted build: remove what it wrote unless it finished a shard (kept, to resume)."""
    if state is None:  # stopped while preparing the directory: at most its new progress file, the directory it made
        if not had_progress:
            (out / PROGRESS_NAME).unlink(missing_ok=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
    elif state.complete is None and not state.progress["shards"]:
        remove_unrecorded_shards(out, 0)  # one renamed just before the stop, not yet in the progress file
        remove_trace(out, out / PROGRESS_NAME, state.created_dir)


def interrupted_message(output: str) -> str:
    """What a build stopped by Ctrl-C left in `output`: one line for the user."""
    out = Path(output)
    try:
        shards = len(json.loads((out / PROGRESS_NAME).read_text(encoding="utf-8"))["shards"])
    except (OSError, ValueError, KeyError, TypeError):
        shards = 0
    if shards:
        return f"interrupted: the {shards} finished shards in {out} are kept; re-run the same command to resume"
    if (out / S.MANIFEST_NAME).is_file():
        return f"interrupted: {out} holds a finished build (its manifest was written)"
    return f"interrupted: nothing written to {out}"


def _kept(out: Path) -> str:
    """What a build stopped by a full disk left in `out`, and what to do."""
    try:
        shards = len(json.loads((out / PROGRESS_NAME).read_text(encoding="utf-8"))["shards"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"nothing of this build was kept in {out}; free space and run the command again"
    return (f"the {shards} finished shards in {out} are kept (the shard being written was removed); free space "
            "and re-run the same command to resume")


def summary(result: BuildResult, output: str) -> str:
    m = result.manifest
    itemsize = np.dtype(m["dtype"]).itemsize
    size = m["total_tokens"] * itemsize
    if result.already_complete:
        return (f"{output} is already complete ({len(m['shards'])} shards, {m['total_documents']:,} documents, "
                f"{m['total_tokens']:,} tokens): nothing to do (pass --overwrite to rebuild)")
    st = m["stats"]
    rate = result.session_tokens / max(result.session_seconds, 1e-9)
    resumed = m["elapsed_seconds"] > result.session_seconds + 1
    lines = [
        f"wrote {output}: {m['total_documents']:,} documents, {m['total_tokens']:,} tokens in {len(m['shards'])} "
        f"shards of {m['dtype']} ({size / 2**20:.1f} MiB on disk, {size / max(m['total_tokens'], 1):.2f} bytes/token)",
        f"time {result.session_seconds:.1f} s, {rate:,.0f} tokens/s "
        f"with {result.num_workers} worker{'s' if result.num_workers > 1 else ''}"
        + (f" ({m['elapsed_seconds']:.1f} s over all runs, resumed)" if resumed else ""),
        f"skipped {st['empty_documents_skipped']:,} empty documents and {st['documents_without_tokens_skipped']:,} "
        f"without tokens, of {st['documents_read']:,} read",
    ]
    replaced = {k: v for k, v in st["replaced_bytes"].items() if v}
    lines.append("replaced undecodable bytes with U+FFFD: " + ", ".join(f"{k}: {v:,}" for k, v in replaced.items())
                 if replaced else "replaced undecodable bytes: none")
    for label, n in st.get("ignored_files", {}).items():
        lines.append(f"ignored {n} files of unsupported type in {label}")
    return "\n  ".join(lines)

