"""Output paths: checked before any work (a file where a directory goes, no write permission), new
directories given the user's umask, and a full disk reported as such. Each command (export,
pretokenize, evaluation) calls these once, up front, and turns the problem into its own error. A model named by
the user is checked here too (`resolve_model_source`), and transformers' errors loading one are named as the input
they are (`model_load_error`)."""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from .errors import ConfigError

NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
EXPORT_MARKER = ".distill-export.json"  # in every exported student: the files that export wrote (distill.export)


def nearest_existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists (what a `mkdir -p path` would start from)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def output_dir_problem(path: str | os.PathLike, flag: str) -> str | None:
    """Why files cannot be written in directory `path` (created if missing), with the fix; None: they can."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{flag} {path} is a file, not a directory; choose another {flag} (or move the file away)"
    base = nearest_existing(path)
    if not base.is_dir():
        return (f"{flag} {path} cannot be created: {base} is a file, not a directory; "
                f"choose another {flag}")
    if not os.access(base, os.W_OK | os.X_OK):
        what = "is" if base == Path(os.path.abspath(path)) else f"cannot be created: {base} is"
        return (f"{flag} {path} {what} not writable (permission denied); choose another {flag} "
                "or change the directory's permissions")
    return None


def is_no_space(error: BaseException) -> bool:
    """A full disk (or an exceeded quota) while writing."""
    return isinstance(error, OSError) and error.errno in NO_SPACE


def no_space_message(what: str, error: OSError, kept: str) -> str:
    """`no space left on device writing WHAT (FILE): KEPT; free space and ...` (without `error: `)."""
    where = f" ({error.filename})" if error.filename else ""
    return f"no space left on device writing {what}{where}: {kept}"


def umask() -> int:
    """The process's umask, read without changing it where the platform allows (no window for other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(root: str | os.PathLike) -> None:
    """Give `root` and everything under it the permissions of new files and directories (0777 / 0666 less
    the umask): tempfile.mkdtemp makes 0700 directories, which other users could not read."""
    mask = umask()
    root = Path(root)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


HUB_EXAMPLE = "google-bert/bert-base-uncased"
_HUB_PART = r"\w(?:[\w.-]*\w)?"
_HUB_NAME = re.compile(rf"^(?:{_HUB_PART}/)?{_HUB_PART}$")  # what the hub accepts as a repo id (no '--' nor '..')


def resolve_model_source(name_or_path: str | os.PathLike, label: str = "teacher") -> str:
    """What to load a model from: an existing local directory (`~` expanded) or a hub name.

    A name meant as a local path that is not a directory raises ConfigError naming `label`, the
    path and the fix, instead of the hub client's "Repo id must be in the form ...". A name is
    meant as a path when it is a PathLike, starts with '.', '~' or a separator, has a separator
    other than a hub name's one '/', its first part exists here as a directory
    ("models/bert" beside a "models/" folder), or it is no valid hub name.
    """
    text = os.fspath(name_or_path)
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        return os.path.expanduser(text)
    if path.exists():
        raise ConfigError(f"{label} {text}: a file, not a model directory; give the directory holding config.json "
                          f"and the weights, or a hub name like {HUB_EXAMPLE}")
    other_separators = {os.sep, os.altsep} - {None, "/"}  # "\\" on Windows
    meant_as_path = (not isinstance(name_or_path, str) or text.startswith((".", "~", "/", *other_separators))
                     or any(sep in text for sep in other_separators)
                     or ("/" in text and Path(text.split("/", 1)[0]).is_dir())
                     or not _HUB_NAME.match(text) or "--" in text or ".." in text)
    if meant_as_path:
        raise ConfigError(f"{label} {text}: no such directory; give a model directory or a hub name like "
                          f"{HUB_EXAMPLE}")
    return text


def model_load_error(label: str, source: str | os.PathLike, error: BaseException) -> ConfigError:
    """transformers' error loading the model (config, weights, tokenizer) at `source`, which the user named with
    `label`: a hub name that does not exist or cannot be reached (no internet, nothing cached: an OSError), a
    directory without the files (OSError), a config it cannot read (ValueError); as the ConfigError naming the input
    and the fix. Raise it `from` the error, so that the original stays in a traceback."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    why = " ".join(lines[:2]) if lines else type(error).__name__
    return ConfigError(f"{label} {os.fspath(source)} cannot be loaded ({why}); give a model directory holding "
                       f"config.json, the weights and the tokenizer, or a hub name like {HUB_EXAMPLE} (downloaded "
                       f"once with internet access, then read from the cache)")


PACKAGE_PARENT = Path(__file__).resolve().parents[1]  # the folder holding `distill`: site-packages or a checkout


def assets_dir() -> Path:
    """The offline assets (teacher, corpora, reviews): $DISTILL_ASSETS, else `assets/` of the checkout this package
    runs from. An installed package (`pip install .`) has no checkout: it needs DISTILL_ASSETS, and `assets_problem`
    says so."""
    root = os.environ.get("DISTILL_ASSETS")
    return Path(root) if root else PACKAGE_PARENT / "assets"


def assets_problem(what: str, path: Path) -> str | None:
    """Why an offline asset `path` (under `assets_dir()`) is missing, with the fix; None when it is there."""
    if path.exists():
        return None
    where = ("$DISTILL_ASSETS" if os.environ.get("DISTILL_ASSETS") else
             "the checkout's assets/" if (PACKAGE_PARENT / "setup.py").is_file() else "$DISTILL_ASSETS (unset)")
    return (f"{what} not found at {path} ({where}): fetch the offline assets with "
            "`bash tools/fetch_offline_assets.sh DIR` and set DISTILL_ASSETS=DIR, or give the path explicitly")
