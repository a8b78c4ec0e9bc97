"""The output directory: start afresh, resume an unfinished build, do nothing for a finished one,
or refuse one built from other settings. Only this tool's own files there are ever touched."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .. import shards as S
from ..io import atomic_write_json
from .errors import PretokenizeError
from .inputs import DEFAULT_MAX_DOC_CHARS

PROGRESS_NAME = ".progress.json"
PROGRESS_FORMAT = "distill-shards-progress"
_OWN_NAME = rf"(?:{S.SHARD_FILE_PATTERN}|{re.escape(S.MANIFEST_NAME)}|{re.escape(PROGRESS_NAME)})"
_OWN_FILE = re.compile(rf"^{_OWN_NAME}$")
_OWN_TEMPORARY = re.compile(rf"^\.{_OWN_NAME}\..*\.tmp$")  # atomic_write_bytes' and ShardWriter's temporaries


def identity_of(record: dict) -> dict:
    """What must match for a directory to be resumed or reused: from a manifest or a progress file."""
    return {"inputs": record.get("inputs"), "tokenizer": (record.get("tokenizer") or {}).get("fingerprint"),
            "text_field": record.get("text_field"), "shard_tokens": record.get("shard_tokens"),
            "dtype": record.get("dtype"),
            # directories built before --max-doc-chars existed: taken as built with the default
            "max_doc_chars": record.get("max_doc_chars", DEFAULT_MAX_DOC_CHARS)}


def _describe_input(entry: dict) -> str:
    if entry.get("format") == "hub":
        return f"dataset {entry['dataset']} (config {entry['config']}, split {entry['split']})"
    if entry.get("format") in ("directory", "datasets"):
        return f"{entry['path']} ({entry['files']} files, {entry['size']} bytes, newest mtime {entry['mtime']})"
    return f"{entry.get('path')} ({entry.get('size')} bytes, mtime {entry.get('mtime')})"


def _location(entry: dict) -> str | None:
    """An input's path, or a hub dataset's name."""
    return entry.get("path", entry.get("dataset"))


def identity_differences(old: dict, new: dict, old_names: dict | None = None,
                         new_names: dict | None = None) -> list[str]:
    """What differs between two identities (identity_of), one line each, in words."""
    diffs = []
    a, b = old.get("inputs") or [], new.get("inputs") or []
    if a != b:
        if len(a) != len(b) or any(_location(x) != _location(y) for x, y in zip(a, b, strict=True)):
            diffs.append("inputs: built from [" + "; ".join(map(_describe_input, a)) + "], now ["
                         + "; ".join(map(_describe_input, b)) + "]")
        else:
            diffs += [f"input changed since: {_describe_input(x)} -> {_describe_input(y)}"
                      for x, y in zip(a, b, strict=True) if x != y]
    if old["tokenizer"] != new["tokenizer"]:
        was = (old_names or {}).get("name_or_path", "?")
        now = (new_names or {}).get("name_or_path", "?")
        diffs.append(f"tokenizer: built with {was!r} (fingerprint {str(old['tokenizer'])[:12]}), "
                     f"now {now!r} (fingerprint {str(new['tokenizer'])[:12]})")
    for key in ("text_field", "shard_tokens", "dtype", "max_doc_chars"):
        if old[key] != new[key]:
            diffs.append(f"{key}: built with {old[key]!r}, now {new[key]!r}")
    return diffs


def own_files(directory: Path) -> list[Path]:
    """The files pretokenize writes in an output directory; nothing else there is ever touched."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and (_OWN_FILE.match(p.name) or _OWN_TEMPORARY.match(p.name)))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PretokenizeError(f"{path} is not valid JSON ({e}); pass --overwrite to rebuild the directory") from e


def _refuse(directory: Path, what: str, diffs: list[str]) -> PretokenizeError:
    return PretokenizeError(
        f"output directory {str(directory)!r} already holds {what} built from other settings:\n  - "
        + "\n  - ".join(diffs)
        + f"\npass --overwrite to replace them (it deletes only manifest.json, {PROGRESS_NAME}, shard-*.bin and "
          "their temporaries there), or choose another --output_dir"
    )


@dataclass
class OutputState:
    complete: dict | None = None  # the manifest of a finished build with the same identity: nothing to do
    progress: dict | None = None  # else the progress record to continue (no shards when starting afresh)
    fresh: bool = False  # nothing of ours was there: a failure before the first shard leaves no trace
    created_dir: bool = False


def prepare_output(out: Path, record: dict, overwrite: bool) -> OutputState:
    """Decide what to do with the output directory: start, resume, nothing (complete), or refuse.

    `record` holds what identifies the build (inputs, tokenizer, text_field, shard_tokens, dtype).
    Writes the progress file (so that shards written next are known to be ours) unless complete.
    That `out` is a directory (or can be made) and writable was checked first (build, with distill.paths).
    """
    manifest_path, progress_path = out / S.MANIFEST_NAME, out / PROGRESS_NAME
    if overwrite:
        for p in own_files(out):
            p.unlink()
    identity = identity_of(record)
    manifest, progress = _read_json(manifest_path), _read_json(progress_path)
    if manifest is not None:
        diffs = identity_differences(identity_of(manifest), identity, manifest.get("tokenizer"), record["tokenizer"])
        if diffs:
            raise _refuse(out, "finished shards", diffs)
        try:
            S.ShardSet(out)  # sizes against the manifest: a complete directory is not rewritten
        except S.ShardError as e:
            raise PretokenizeError(f"{e}\n(pass --overwrite to rebuild {str(out)!r} from scratch)") from e
        if progress_path.exists():
            progress_path.unlink()  # left by a run killed between writing the manifest and cleaning up
        return OutputState(complete=manifest)
    state = OutputState(fresh=progress is None, created_dir=not out.exists())
    if progress is not None:
        if progress.get("format") != PROGRESS_FORMAT or progress.get("version") != S.FORMAT_VERSION:
            raise PretokenizeError(f"{progress_path} was not written by this version of pretokenize; "
                                   "pass --overwrite or choose another --output_dir")
        diffs = identity_differences(identity_of(progress), identity, progress.get("tokenizer"), record["tokenizer"])
        if diffs:
            raise _refuse(out, "an unfinished build", diffs)
    else:
        strays = [p.name for p in own_files(out) if S.SHARD_FILE.match(p.name)]
        if strays:
            listed = ", ".join(strays[:3]) + (" ..." if len(strays) > 3 else "")
            raise _refuse(out, f"{len(strays)} shard files ({listed})",
                          [f"there is no {S.MANIFEST_NAME} or {PROGRESS_NAME} saying what they were built from"])
        progress = {"format": PROGRESS_FORMAT, "version": S.FORMAT_VERSION, **record, "shards": [],
                    "consumed_documents": 0, "documents_without_tokens": 0, "elapsed_seconds": 0.0}
    out.mkdir(parents=True, exist_ok=True)
    for p in own_files(out):
        if _OWN_TEMPORARY.match(p.name):
            p.unlink()  # half-written files of a killed run
    atomic_write_json(progress_path, progress)
    state.progress = progress
    return state


def remove_trace(directory: Path, progress_path: Path, created_dir: bool) -> None:
    """Undo a build that failed before its first shard: its progress file, and the directory if it made it."""
    progress_path.unlink(missing_ok=True)
    if created_dir and directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()



def remove_unrecorded_shards(directory: Path, recorded: int) -> None:
    """Delete shards numbered `recorded` and up: renamed by a run killed before its progress file named them."""
    for p in own_files(directory):
        m = S.SHARD_FILE.match(p.name)
        if m and int(m.group(1)) >= recorded:
            p.unlink()
