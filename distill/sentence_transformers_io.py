"""The student as a sentence-transformers model: the teacher's modules read at the start of a run, the student's written
at export.

A sentence-transformers model is a Hugging Face encoder (the `Transformer` module, its weights, config and tokenizer at
the top of the directory) followed by modules listed in `modules.json`, each with its files in a folder. distill
reproduces four of them: `Transformer` (the student's own encoder), `Pooling` (the same pooling modes over the student's
width), `Normalize`, and `Dense` where the widths allow (its input width equals the pooled width before it; otherwise it
is dropped with a note). Any other module is refused before a run writes anything.

- `read_teacher_modules` (the start of a run): the teacher's modules.json, module configs, Dense weights and
  config_sentence_transformers.json, checked, as a `Modules` value; `Modules.save` keeps it in the run's
  `student_config/` (so the export needs no teacher). A plain teacher with `--export_format sentence-transformers`
  gets the layout sentence-transformers itself gives a plain encoder: Transformer + mean Pooling.
- `modules_for_export` and `student_files` (the export): the layout again, resized for the student.

The files are written in the layouts sentence-transformers reads: the teacher's own (any version's), or for a plain
teacher the long-standing `pooling_mode_*_tokens` one. Nothing here imports sentence-transformers (an optional extra,
`pip install 'distill[embeddings]'`): it is only looked for when asked for by name.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import metadata, util
from pathlib import Path, PurePosixPath

from .errors import ConfigError, ExportError

EXPORT_FORMATS = ("auto", "hf", "sentence-transformers")
SKELETON_DIR = "sentence-transformers"  # in OUTPUT_DIR/student_config
MODULES_JSON = "modules.json"
ST_CONFIG = "config_sentence_transformers.json"
TRANSFORMER_CONFIG = "sentence_bert_config.json"
# the names sentence-transformers tries for the Transformer module's config, in its order
TRANSFORMER_CONFIGS = (TRANSFORMER_CONFIG, "sentence_roberta_config.json", "sentence_distilbert_config.json",
                       "sentence_camembert_config.json", "sentence_albert_config.json",
                       "sentence_xlm-roberta_config.json", "sentence_xlnet_config.json")
KINDS = ("Transformer", "Pooling", "Normalize", "Dense")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
POOLING_WIDTH_KEYS = ("word_embedding_dimension", "embedding_dimension")  # before / since sentence-transformers 6
POOLING_TYPE = "sentence_transformers.models.Pooling"
INSTALL_HINT = "pip install 'distill[embeddings]' (sentence-transformers>=5.0)"


@dataclass
class Modules:
    """A sentence-transformers layout without the encoder: `entries` as in modules.json (the Transformer's path is ""),
    `files` {path in the layout: bytes} (module configs, Dense weights, config_sentence_transformers.json and the
    Transformer's sentence_bert_config.json when the teacher has them)."""
    entries: list[dict]
    files: dict[str, bytes] = field(default_factory=dict)

    def save(self, directory: str | os.PathLike) -> None:
        """Write the layout to `directory` (made; inside a directory the caller moves into place)."""
        root = Path(directory)
        for name, data in {MODULES_JSON: _json_bytes(self.entries), **self.files}.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Modules:
        root = Path(directory)
        entries = _parse((root / MODULES_JSON).read_bytes(), str(root / MODULES_JSON))
        files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        files.pop(MODULES_JSON)
        return cls(entries, files)


def check_export_format(value: str, flag: str = "--export_format") -> None:
    if value not in EXPORT_FORMATS:
        raise ConfigError(f"{flag} {value!r}: choose {', '.join(EXPORT_FORMATS[:-1])} or {EXPORT_FORMATS[-1]}")


def require_installed(flag: str = "--export_format") -> None:
    """ConfigError unless sentence-transformers can be imported (looked for, not imported: that takes seconds)."""
    if util.find_spec("sentence_transformers") is None:
        raise ConfigError(f"{flag} sentence-transformers needs the sentence-transformers package, which is not "
                          f"installed: {INSTALL_HINT}, or use {flag} hf for a plain Hugging Face encoder")


def kind_of(entry: dict) -> str | None:
    """The kind of a modules.json entry: "Pooling" for sentence_transformers.models.Pooling (and for 6's
    ...modules.pooling.Pooling); None for a module not in KINDS."""
    kind = str(entry.get("type", ""))
    name = kind.rsplit(".", 1)[-1]
    return name if kind.startswith("sentence_transformers.") and name in KINDS else None


def mean_pooling(width: int) -> Modules:
    """What sentence-transformers makes of a plain encoder of `width`: Transformer + mean Pooling."""
    pooling = {"word_embedding_dimension": width, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
               "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
    entries = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": POOLING_TYPE}]
    return Modules(entries, {"1_Pooling/config.json": _json_bytes(pooling)})


# --------------------------------------------------------------------------- the start of a run
def read_teacher_modules(source: str | None, export_format: str, teacher_width: int,
                         flag: str = "--export_format") -> Modules | None:
    """The modules the export will write (None: a plain Hugging Face export), read from teacher `source` (a directory
    or hub name; None: not readable, a plain teacher). ConfigError naming the module and the fix when the teacher has
    one the export cannot reproduce, or when sentence-transformers is asked for by name and is not installed."""
    check_export_format(export_format, flag)
    if export_format == "hf":
        return None
    if export_format == "sentence-transformers":
        require_installed(flag)
    raw = _fetch(source, MODULES_JSON) if source else None
    if raw is None:
        return mean_pooling(teacher_width) if export_format == "sentence-transformers" else None
    entries = _check_entries(_parse(raw, f"{source}/{MODULES_JSON}"), source, flag)
    modules = Modules([], {})
    for entry in entries:
        path = "" if kind_of(entry) == "Transformer" else str(entry["path"]).strip("/")
        modules.entries.append({**entry, "path": path})
        modules.files.update(_module_files(source, entry, path))
    config = _fetch(source, ST_CONFIG)
    if config is not None:
        _parse(config, f"{source}/{ST_CONFIG}")
        modules.files[ST_CONFIG] = config
    return modules


def _check_entries(entries, source: str, flag: str) -> list[dict]:
    """modules.json's entries, each a module distill can write; the Transformer first and once, a Pooling after it."""
    where = f"the teacher {source} (a sentence-transformers model)"
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "type" in e and "path" in e for e in entries):
        raise ConfigError(f"{where}: its {MODULES_JSON} is not a list of modules with a type and a path")
    for entry in entries:
        if kind_of(entry) is None:
            raise ConfigError(f"{where} has a module the export cannot reproduce: {entry.get('name', '?')} "
                              f"({entry['type']}, in {entry['path'] or 'the top folder'}); distill writes "
                              f"{', '.join(KINDS)} modules only: use {flag} hf to export the student as a plain "
                              f"Hugging Face encoder (and add the module yourself), or distil a teacher without it")
        path = PurePosixPath(str(entry["path"]))
        if (path.is_absolute() or ".." in path.parts or "\\" in str(entry["path"])
                or (not path.parts and kind_of(entry) != "Transformer")):
            raise ConfigError(f"{where}: module {entry.get('name', '?')} has the path {entry['path']!r}, not a folder "
                              "inside the model")
    kinds = [kind_of(e) for e in entries]
    if (kinds[:1] != ["Transformer"] or kinds.count("Transformer") != 1 or "Pooling" not in kinds
            or "Dense" in kinds[:kinds.index("Pooling")]):
        raise ConfigError(f"{where} has the modules {kinds}; the export reproduces a Transformer first, then a "
                          f"Pooling, then Normalize or Dense modules: use {flag} hf to export the student as a plain "
                          "encoder")
    return entries


def _module_files(source: str, entry: dict, path: str) -> dict[str, bytes]:
    """The files of one module, by their path in the layout (the Transformer's config at the top); checked."""
    kind, folder = kind_of(entry), str(entry["path"]).strip("/")
    where = f"the teacher {source}: module {entry.get('name', '?')} ({kind})"
    name = lambda file: f"{folder}/{file}" if folder else file  # noqa: E731
    if kind == "Transformer":
        found = next((data for file in TRANSFORMER_CONFIGS if (data := _fetch(source, name(file))) is not None), None)
        return {} if found is None else {TRANSFORMER_CONFIG: _checked(found, f"{source}/{name(TRANSFORMER_CONFIG)}")}
    config = _fetch(source, name("config.json"))
    if config is None:
        if kind == "Normalize":  # sentence-transformers before 6 saves none
            return {}
        raise ConfigError(f"{where} has no {name('config.json')}")
    files = {f"{path}/config.json": config}
    values = _parse(config, f"{source}/{name('config.json')}")
    if kind == "Pooling" and not any(isinstance(values.get(k), int) for k in POOLING_WIDTH_KEYS):
        raise ConfigError(f"{where}: {name('config.json')} names no width ({' or '.join(POOLING_WIDTH_KEYS)})")
    if kind == "Dense":
        if not all(isinstance(values.get(k), int) for k in ("in_features", "out_features")):
            raise ConfigError(f"{where}: {name('config.json')} lacks in_features / out_features")
        weights = next(((f, data) for f in WEIGHT_FILES if (data := _fetch(source, name(f))) is not None), None)
        if weights is None:
            raise ConfigError(f"{where} has no weights ({' or '.join(name(f) for f in WEIGHT_FILES)})")
        files[f"{path}/{weights[0]}"] = weights[1]
    return files


def _fetch(source: str, name: str) -> bytes | None:
    """File `name` of a model directory or a hub model (downloaded or cached); None if it has none."""
    local = Path(os.path.expanduser(source))
    if local.is_dir():
        return (local / name).read_bytes() if (local / name).is_file() else None
    from transformers.utils import cached_file

    found = cached_file(source, name, _raise_exceptions_for_missing_entries=False,
                        _raise_exceptions_for_connection_errors=False, _raise_exceptions_for_gated_repo=False)
    return Path(found).read_bytes() if found else None


# --------------------------------------------------------------------------- the export
def modules_for_export(skeleton: str | os.PathLike, export_format: str, width: int,
                       flag: str = "--export_format") -> Modules | None:
    """The layout to export from a run's `student_config` (None: a plain export): what the run kept there, or for
    `sentence-transformers` where it kept none, mean pooling over the student's `width`."""
    check_export_format(export_format, flag)
    if export_format == "hf":
        return None
    if export_format == "sentence-transformers":
        require_installed(flag)
    kept = Path(skeleton) / SKELETON_DIR
    if (kept / MODULES_JSON).is_file():
        return Modules.load(kept)
    return mean_pooling(width) if export_format == "sentence-transformers" else None


def student_files(modules: Modules, width: int, max_seq_length: int, projection=None) -> tuple[dict[str, bytes],
                                                                                             list[str]]:
    """The student's sentence-transformers files ({path: bytes}, besides its encoder's weights, config and
    tokenizer) and one note per module dropped.

    Each module is renamed `<idx>_<kind>` in order; the Pooling's width becomes `width`; a Dense is carried only
    where its input width equals the width before it. `projection` (a [out, in] tensor, `in` the pooled width) is
    written as a bias-free linear Dense right after the Pooling: the hook for a learned projection to the teacher's
    width, after which the teacher's own Dense modules fit again.
    """
    entries, files, notes, pooled = [], {}, [], None
    for entry in modules.entries:
        kind, source = kind_of(entry), entry["path"]
        if kind == "Transformer":
            entries.append({**entry, "path": ""})
            files[TRANSFORMER_CONFIG] = modules.files.get(TRANSFORMER_CONFIG) or _json_bytes(
                {"max_seq_length": max_seq_length, "do_lower_case": False})
            continue
        if kind == "Dense":
            dense = json.loads(modules.files[f"{source}/config.json"])
            if dense["in_features"] != pooled:
                notes.append(f"the teacher's Dense module {source} ({dense['in_features']} -> {dense['out_features']}) "
                             f"is left out of the student: it takes {dense['in_features']} inputs, the student's "
                             f"embedding before it has {pooled}")
                continue
            pooled = dense["out_features"]
        path = f"{len(entries)}_{kind}"
        entries.append({**entry, "path": path})
        files.update({f"{path}/{name[len(source) + 1:]}": data for name, data in modules.files.items()
                      if name.startswith(f"{source}/")})
        if kind == "Pooling":
            files[f"{path}/config.json"], pooled = _student_pooling(modules.files[f"{source}/config.json"], width)
            if projection is not None:
                pooled = _add_projection(entries, files, projection, pooled)
    for idx, entry in enumerate(entries):
        entry.update(idx=idx, name=str(idx))
    files[MODULES_JSON] = _json_bytes(entries)
    files[ST_CONFIG] = _student_st_config(modules.files.get(ST_CONFIG))
    return files, notes


def pooling_modes(modules: Modules) -> tuple[str, ...]:
    """The Pooling module's modes in sentence-transformers 6's names ("mean", "cls", "max", "mean_sqrt_len_tokens",
    "weightedmean", "lasttoken"), from either layout; () without a Pooling."""
    entry = next((e for e in modules.entries if kind_of(e) == "Pooling"), None)
    return () if entry is None else _modes(json.loads(modules.files[f"{entry['path']}/config.json"]))


_LEGACY_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                   "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                   "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


def _modes(pooling: dict) -> tuple[str, ...]:
    mode = pooling.get("pooling_mode")
    if mode is not None:  # sentence-transformers 6: a name or a list of names
        return (mode,) if isinstance(mode, str) else tuple(mode)
    # before: one switch per mode, mean when none is on
    return tuple(name for key, name in _LEGACY_POOLING.items() if pooling.get(key)) or ("mean",)


def _student_pooling(config: bytes, width: int) -> tuple[bytes, int]:
    """The Pooling config over `width`, and the width it outputs (`width` x its number of pooling modes)."""
    values = json.loads(config)
    for key in POOLING_WIDTH_KEYS:
        if key in values:
            values[key] = width
    return _json_bytes(values), width * len(_modes(values))


def _add_projection(entries: list[dict], files: dict[str, bytes], weight, pooled: int) -> int:
    """A Dense (no bias, identity activation) holding `weight` [out, in] after the Pooling; returns `out`."""
    import torch
    from safetensors.torch import save

    out_features, in_features = weight.shape
    if in_features != pooled:
        raise ExportError(f"the projection takes {in_features} inputs but the student's pooled embedding has {pooled}")
    path = f"{len(entries)}_Dense"
    entries.append({"path": path, "type": "sentence_transformers.models.Dense"})
    files[f"{path}/config.json"] = _json_bytes({"in_features": in_features, "out_features": out_features,
                                                "bias": False,
                                                "activation_function": "torch.nn.modules.linear.Identity"})
    files[f"{path}/model.safetensors"] = save({"linear.weight": weight.detach().to("cpu", torch.float32).contiguous()})
    return out_features


def _student_st_config(teacher: bytes | None) -> bytes:
    """The teacher's config_sentence_transformers.json (similarity function, prompts), with the `__version__` keys as
    sentence-transformers writes them: the versions writing the export (the teacher's where one is not installed)."""
    import torch
    import transformers

    values = json.loads(teacher) if teacher else {}
    try:
        st_version = metadata.version("sentence-transformers")
    except metadata.PackageNotFoundError:
        recorded = values.get("__version__")
        st_version = recorded.get("sentence_transformers") if isinstance(recorded, dict) else None
    versions = {"sentence_transformers": st_version, "transformers": transformers.__version__,
                "pytorch": torch.__version__}
    merged = {"model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
              "similarity_fn_name": "cosine"}
    merged.update({k: v for k, v in values.items() if k != "__version__" and v is not None})
    merged["__version__"] = {k: v for k, v in versions.items() if v}
    return (json.dumps(merged, indent=2, sort_keys=True) + "\n").encode("utf-8")  # sorted, as it writes them


def max_seq_length(config, tokenizer) -> int:
    """sentence-transformers' own default for an encoder: the smaller of its positions and the tokenizer's length."""
    limits = [n for n in (getattr(config, "max_position_embeddings", None), tokenizer.model_max_length)
              if isinstance(n, int) and 0 < n < 10**9]
    return min(limits) if limits else 512


def _parse(data: bytes, where: str):
    try:
        return json.loads(data)
    except ValueError as e:
        raise ConfigError(f"{where} is not valid JSON: {e}") from None


def _checked(data: bytes, where: str) -> bytes:
    _parse(data, where)
    return data


def _json_bytes(value) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode("utf-8")


__all__ = ["EXPORT_FORMATS", "SKELETON_DIR", "Modules", "check_export_format", "require_installed", "kind_of",
           "mean_pooling", "read_teacher_modules", "modules_for_export", "student_files", "pooling_modes",
           "max_seq_length"]
