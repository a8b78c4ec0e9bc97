"""Build a wheelhouse: every wheel distill needs beyond a stock CUDA PyTorch install, for another machine.

Called by tools/wheelhouse.sh (see there for the usage). On a machine with internet:

1. distill itself is built as a wheel; deepspeed too when PyPI has only its sdist (DS_BUILD_OPS=0: pure
   Python, the ops are compiled on the GPU node the first time they are used);
2. pip resolves `distill[test]` for the target Python and platform (`pip install --dry-run --target ...
   --report`, metadata only: nothing of torch's multi-GB CUDA wheels is downloaded);
3. torch and triton are cut out of the graph with what only they need (nvidia-*, sympy, ...): the target's
   CUDA torch brings them; everything still reachable from distill is downloaded, wheels only, without
   installing anything;
4. the wheels and a manifest (wheelhouse.txt) are moved into DIR at the end: a failure leaves DIR as it was.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pragma: no cover - pip always vendors it
    from pip._vendor.packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
EXTRAS = "test"  # pytest & co: `make gpu-check` runs `pytest -m gpu` on the node
EXCLUDED = ("torch", "triton")  # a stock CUDA torch install has them and what they need
MANIFEST = "wheelhouse.txt"


class WheelhouseError(Exception):
    """Bad input or a pip failure, with the fix: printed as `error: ...`, exit status 2."""


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def say(msg: str) -> None:
    print(f"[wheelhouse] {msg}", flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    p = argparse.ArgumentParser(prog="tools/wheelhouse.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="the folder to create (missing or empty)")
    p.add_argument("--python-version", default=here, help=f"the target's Python, X.Y (default: {here})")
    p.add_argument("--platform", default="manylinux_2_28_x86_64",
                   help="the target's platform tag (default: manylinux_2_28_x86_64, what PyTorch's CUDA wheels need)")
    args = p.parse_args(argv)
    if not re.fullmatch(r"3\.\d{1,2}", args.python_version):
        raise WheelhouseError(f"--python-version {args.python_version!r} is not a Python 3 version; give X.Y, "
                              "e.g. --python-version 3.12")
    if not re.fullmatch(r"[a-z0-9_]+", args.platform):
        raise WheelhouseError(f"--platform {args.platform!r} is not a platform tag; give one such as "
                              "manylinux_2_28_x86_64 (`python -c 'import sysconfig; print(sysconfig.get_platform())'` "
                              "on the target shows its architecture)")
    out = Path(args.dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise WheelhouseError(f"{out} already exists and is not an empty folder; give a new folder "
                              f"(or remove {out} to rebuild it)")
    return args


def platforms(tag: str) -> list[str]:
    """pip (< 24) takes a manylinux_2_Y tag literally: list every older manylinux a wheel may carry."""
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag)
    if not m:
        return [tag]
    glibc, arch = int(m.group(1)), m.group(2)
    tags = [f"manylinux_2_{y}_{arch}" for y in range(glibc, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{name}_{arch}" for y, name in legacy.items() if y <= glibc]


def marker_env(python_version: str, platform: str) -> dict[str, str]:
    """The markers pip would see on the target (pip itself evaluates them for the running interpreter)."""
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    full = ".".join(map(str, sys.version_info[:3])) if python_version == here else python_version + ".0"
    arch = platform.rsplit("_", 2)[-1] if "x86_64" not in platform else "x86_64"
    if platform.startswith("win"):
        system, sys_platform, arch = "Windows", "win32", "AMD64" if platform == "win_amd64" else arch
    elif platform.startswith("macosx"):
        system, sys_platform = "Darwin", "darwin"
    else:
        system, sys_platform = "Linux", "linux"
    return {"python_version": python_version, "python_full_version": full, "os_name": "nt" if system == "Windows"
            else "posix", "sys_platform": sys_platform, "platform_system": system, "platform_machine": arch,
            "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def pip(args: list[str], what: str, env: dict | None = None) -> str:
    """Run `python -m pip ARGS`; on failure raise naming the package pip could not find."""
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode == 0:
        return proc.stdout
    err = proc.stderr + proc.stdout
    # a package without any fitting wheel, or (pip's resolver) the first requirement of a conflict
    missing = re.findall(r"No matching distribution found for ([^\s;]+)", err) or re.findall(
        r"The conflict is caused by:\s+\S+(?: \S+)? depends on ([^\s;]+)", err)
    if missing:
        raise WheelhouseError(f"{what}: pip finds no wheel of {missing[0]} for this Python and platform; "
                              "pick a --python-version / --platform that the package publishes wheels for "
                              "(e.g. --python-version 3.12 --platform manylinux_2_28_x86_64)")
    tail = "\n".join(line for line in err.strip().splitlines() if "is ignored" not in line)[-2000:]
    raise WheelhouseError(f"{what} failed (pip exit {proc.returncode}); fix what pip says and run again:\n{tail}")


def target_flags(args: argparse.Namespace) -> list[str]:
    nodot = args.python_version.replace(".", "")
    flags = ["--only-binary=:all:", "--python-version", args.python_version, "--implementation", "cp",
             "--abi", f"cp{nodot}"]
    for tag in platforms(args.platform):
        flags += ["--platform", tag]
    return flags


def requirement_of(wheel: Path, name: str) -> str:
    """NAME's requirement line in WHEEL's metadata (e.g. "deepspeed>=0.14")."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    req = next(r for r in reqs if canon(r.name) == name)
    return f"{req.name}{req.specifier}"


def local_wheels(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """distill as a wheel, and deepspeed's wheel: the newest release's from the index, or built from its
    sdist when it has none (PyPI's deepspeed wheels are a few pre-releases from 2020)."""
    local = work / "local"
    say("building the distill wheel")
    pip(["wheel", "--no-deps", "-q", "-w", str(local), str(REPO)], "building the distill wheel")
    spec = requirement_of(next(local.glob("distill-*.whl")), "deepspeed")
    pip(["download", "--no-deps", "-q", "--no-binary=:all:", "-d", str(work / "sdist"), spec],
        "downloading the deepspeed sdist")
    sdist = next((work / "sdist").iterdir())
    version = sdist.name[len("deepspeed-"):].removesuffix(".tar.gz")
    try:
        pip(["download", "--no-deps", "-q", "-d", str(local), *target_flags(args), f"deepspeed=={version}"],
            "deepspeed")
        say(f"deepspeed {version}: a wheel on the index")
    except WheelhouseError:
        say(f"deepspeed {version}: only an sdist on the index; building a pure-Python wheel (DS_BUILD_OPS=0)")
        pip(["wheel", "--no-deps", "-q", "-w", str(local), str(sdist)], "building the deepspeed wheel",
            env={"DS_BUILD_OPS": "0"})
    found = {canon(w.name.split("-")[0]): w for w in local.glob("*.whl")}
    return {"distill": found["distill"], "deepspeed": found["deepspeed"]}


def resolve(args: argparse.Namespace, work: Path, reqs: list[str]) -> dict[str, dict]:
    """pip's resolution of REQS for the target: {canonical name: report item} (metadata only)."""
    report = work / "report.json"
    pip(["install", "--dry-run", "--ignore-installed", "--target", str(work / "target"),
         "--report", str(report), *target_flags(args), *reqs], "resolving distill's requirements")
    items = json.loads(report.read_text())["install"]
    return {canon(i["metadata"]["name"]): i for i in items}


def needed(resolved: dict[str, dict], env: dict[str, str]) -> tuple[set[str], list[str]]:
    """What distill[test] reaches without going through torch or triton, under the target's markers; and the
    requirements the target needs that pip left out (it evaluated their markers for this interpreter)."""
    extras: dict[str, set[str]] = {"distill": set(EXTRAS.split(","))}
    queue, seen, absent = ["distill"], set(), []
    while queue:
        name = queue.pop()
        seen.add(name)
        for line in resolved[name]["metadata"].get("requires_dist", []):
            req = Requirement(line)
            wanted = [""] + sorted(extras.get(name, ()))
            if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in wanted):
                continue
            dep = canon(req.name)
            if dep in EXCLUDED:
                continue
            if dep not in resolved:
                absent.append(f"{req.name}{req.specifier}")
                continue
            more = set(req.extras) - extras.get(dep, set())
            if dep not in seen or more:
                extras.setdefault(dep, set()).update(req.extras)
                seen.discard(dep)
                queue.append(dep)
    return seen, absent


def plan(args: argparse.Namespace, work: Path, local: dict[str, Path]) -> list[dict]:
    reqs = [f"distill[{EXTRAS}] @ {local['distill'].as_uri()}", f"deepspeed @ {local['deepspeed'].as_uri()}"]
    env = marker_env(args.python_version, args.platform)
    for _ in range(3):
        say(f"resolving distill[{EXTRAS}] for Python {args.python_version} on {args.platform}")
        resolved = resolve(args, work, reqs)
        keep, absent = needed(resolved, env)
        if not absent:
            return [resolved[name] for name in sorted(keep)]
        reqs += absent
    raise WheelhouseError(f"the requirements {absent} of the target could not be resolved; report this")


def download(args: argparse.Namespace, work: Path, items: list[dict], local: dict[str, Path]) -> Path:
    wheels = work / "wheels"
    wheels.mkdir()
    urls = [i["download_info"]["url"] for i in items if canon(i["metadata"]["name"]) not in local]
    (work / "urls.txt").write_text("\n".join(urls) + "\n")
    say(f"downloading {len(urls)} wheels")
    pip(["download", "--no-deps", "-q", "-d", str(wheels), *target_flags(args), "-r", str(work / "urls.txt")],
        "downloading the wheels")
    for path in local.values():
        shutil.copy2(path, wheels / path.name)
    return wheels


def write_manifest(args: argparse.Namespace, wheels: Path) -> list[str]:
    names = sorted(p.name for p in wheels.glob("*.whl"))
    lines = ["# distill wheelhouse, built by tools/wheelhouse.sh; install offline with",
             "#   bash tools/install.sh --wheelhouse DIR [VENV]   (or: make install WHEELHOUSE=DIR)",
             "# into an environment that already has a CUDA torch (torch and triton are not here).",
             f"python-version: {args.python_version}", f"platform: {args.platform}",
             f"requirement: distill[{EXTRAS}]", f"excluded: {' '.join(EXCLUDED)} and what only they need"]
    lines += [f"wheel: {name}" for name in names]
    with open(wheels / MANIFEST, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return names


def move_in(wheels: Path, out: Path) -> None:
    """Everything appears in OUT at once: one rename of the finished folder."""
    for path in wheels.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    if out.exists():
        out.rmdir()  # empty: checked up front
    os.rename(wheels, out)
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        out = Path(args.dir).absolute()
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            local = local_wheels(args, work)
            wheels = download(args, work, plan(args, work, local), local)
            names = write_manifest(args, wheels)
            move_in(wheels, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except WheelhouseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = sum((out / n).stat().st_size for n in names) / 2**20
    say(f"{len(names)} wheels, {size:.0f} MiB in {out} (manifest: {out / MANIFEST})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
