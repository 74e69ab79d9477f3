"""Fill ``tools/gpu_wheels/`` with the wheels the GPU check installs on a machine with no package
registry; run it through ``tools/gpu_check.sh --fill-wheels [--local]`` (docs/design.md §13).

By default the wheels are for the GPU machines' image: CPython 3.12 (``GPU_PYTHON_VERSION``),
manylinux x86-64, and only what dreamperp needs beyond the packages that image already holds
(``tools/gpu_image_packages.txt``): the requirement tree is resolved against the image's known
versions, then walked from dreamperp's requirements without descending into a package the image has.
torch and its CUDA libraries are never fetched (the machine's own CUDA build is used). A package
published only as source is built here into a pure-Python wheel. The folder must fit the device
tool's 64 MiB a call together with the checkout, so the fill fails over ``--max-mib`` (60), and
``SIZE_PINS`` keeps a package whose newest wheel is too large at an older release.

``--local`` fills for this interpreter and platform instead, with the whole tree but torch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
except ImportError:  # a bare interpreter: pip carries its own copy
    from pip._vendor.packaging.markers import default_environment  # type: ignore[no-redef]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "tools" / "gpu_wheels"
IMAGE_PACKAGES = ROOT / "tools" / "gpu_image_packages.txt"
GPU_PYTHON = "3.12"
DEVICE_LIMIT_MIB = 64  # what one device call carries: the checkout and the carried folders
MAX_MIB = 60
MIB = 1 << 20
# torch, its compiler and its CUDA libraries: gigabytes, and the machine's own build must be used.
TORCH_STACK = re.compile(r"^(torch|triton|nvidia-|cuda-)")
# Kept below a size for the device call's 64 MiB: imageio-ffmpeg 0.8's wheel is 65 MiB (its ffmpeg
# build), 0.7's 28 MiB with the same API (`write_frames`).
SIZE_PINS = ["imageio-ffmpeg<0.8"]
# The test runner is part of the check (the CUDA-only tests).
EXTRA_REQUIREMENTS = ["pytest>=7"]


class FillError(Exception):
    """A fill that cannot be done as asked; the message says what to change."""


def normalize(name: str) -> str:
    """The comparable form of a distribution name (PEP 503): ``PyMCubes`` -> ``pymcubes``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_image_packages(text: str) -> Dict[str, Optional[str]]:
    """``NAME`` or ``NAME==VERSION`` lines (``#`` comments, blanks ignored) -> {normalized name: version or None}."""
    packages: Dict[str, Optional[str]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:==([A-Za-z0-9.+!_-]+))?", line)
        if match is None:
            raise FillError(f"image package list, line {number}: {raw.strip()!r} is not NAME or NAME==VERSION")
        packages[normalize(match.group(1))] = match.group(2)
    return packages


def constraints(image: Dict[str, Optional[str]]) -> List[str]:
    """The image's known versions as pip constraints, so the resolved tree fits what is installed there."""
    return [f"{name}=={version}" for name, version in sorted(image.items()) if version]


def requirements(pyproject: str) -> List[str]:
    """dreamperp's dependencies from pyproject.toml, and pytest, without torch (the machine's own is used)."""
    block = re.search(r"^dependencies = \[(.*?)^\]", pyproject, re.S | re.M)
    if block is None:
        raise FillError("pyproject.toml: no [project] dependencies list found")
    names = re.findall(r'"([^"]+)"', block.group(1)) + EXTRA_REQUIREMENTS
    return [spec for spec in names if not TORCH_STACK.match(normalize(Requirement(spec).name))]


def platform_options(python_version: str) -> List[str]:
    """pip options for CPython ``python_version`` on manylinux x86-64, binary only. pip matches a
    ``manylinux_2_N`` tag exactly, so every N up to the image's glibc (2.39) is named."""
    options = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    for tag in [f"manylinux_2_{n}_x86_64" for n in range(39, 16, -1)] + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]:
        options += ["--platform", tag]
    return options


def target_environment(python_version: Optional[str]) -> Dict[str, str]:
    """Marker values for the target interpreter (x86-64 Linux CPython ``python_version``; None: this one)."""
    env = dict(default_environment())
    if python_version is not None:
        full = python_version if python_version.count(".") >= 2 else python_version + ".0"
        env.update(python_version=".".join(python_version.split(".")[:2]), python_full_version=full, implementation_name="cpython",
                   platform_python_implementation="CPython", sys_platform="linux", platform_system="Linux", os_name="posix", platform_machine="x86_64")
    return env


def to_fetch(report: dict, roots: Sequence[str], image: Iterable[str], environment: Dict[str, str]) -> List[Tuple[str, str]]:
    """(name, version) of every package of pip's resolver ``report`` reachable from ``roots`` (requirement
    strings) without passing through an image package or the torch stack, in report order.

    A package the image holds brings its own dependencies there, so neither it nor what only it needs is fetched.
    """
    resolved = {normalize(item["metadata"]["name"]): item["metadata"] for item in report["install"]}
    skip = {normalize(name) for name in image}
    walked: Set[Tuple[str, Tuple[str, ...]]] = set()
    # (requirement, the extras asked of the package that states it: its markers read `extra == ...`)
    queue: List[Tuple[Requirement, Tuple[str, ...]]] = [(Requirement(spec), ()) for spec in roots]
    while queue:
        req, asked = queue.pop()
        if req.marker is not None and not any(req.marker.evaluate({**environment, "extra": extra}) for extra in (asked or ("",))):
            continue
        name, extras = normalize(req.name), tuple(sorted(req.extras))
        if name in skip or TORCH_STACK.match(name) or (name, extras) in walked:
            continue
        if name not in resolved:
            raise FillError(f"{req.name} is required but pip's resolution does not list it")
        walked.add((name, extras))
        queue += [(Requirement(spec), extras) for spec in resolved[name].get("requires_dist") or []]
    wanted = {name for name, _ in walked}
    return [(meta["name"], meta["version"]) for name, meta in resolved.items() if name in wanted]


def wheel_name(filename: str) -> str:
    """The normalized distribution name of a wheel or sdist file name."""
    stem = filename[:-4] if filename.endswith(".whl") else re.sub(r"\.(tar\.gz|zip)$", "", filename)
    return normalize(stem.split("-")[0] if filename.endswith(".whl") else stem.rsplit("-", 1)[0])


def check_folder(folder: Path, max_bytes: int) -> Tuple[List[Tuple[str, int]], int]:
    """(file, bytes) of every wheel in ``folder`` and their total; FillError on two versions of one
    package (pip refuses to install both) or a total over ``max_bytes`` (0: no limit)."""
    files = sorted((path.name, path.stat().st_size) for path in folder.iterdir() if path.is_file())
    seen: Dict[str, str] = {}
    for filename, _ in files:
        name = wheel_name(filename)
        if name in seen:
            raise FillError(f"{folder}: two versions of {name} ({seen[name]}, {filename}); empty the folder and fill again")
        seen[name] = filename
    total = sum(size for _, size in files)
    if max_bytes and total > max_bytes:
        largest = ", ".join(f"{name} {size / MIB:.1f} MiB" for name, size in sorted(files, key=lambda f: -f[1])[:3])
        raise FillError(f"{folder}: {total / MIB:.1f} MiB of wheels is over the {max_bytes / MIB:.0f} MiB that a device call can carry "
                        f"(largest: {largest}); list more of the GPU machine's packages in {IMAGE_PACKAGES.relative_to(ROOT)} "
                        "or raise --max-mib for a machine reached otherwise")
    return files, total


def checkout_bytes() -> Optional[int]:
    """Bytes of the files a device call sends besides carried folders (tracked and untracked, not ignored)."""
    try:
        listing = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum((ROOT / name).stat().st_size for name in listing.decode().split("\0") if name and (ROOT / name).is_file())


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def _resolve(requirement_file: Path, constraint_file: Path, target: List[str], report: Path, find_links: Optional[Path]) -> bool:
    """pip's resolution, metadata only, of the whole tree (torch too) into ``report``; False if it fails."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed", "--target", str(report.parent / "none"),
           "--report", str(report), *target, "-c", str(constraint_file), "-r", str(requirement_file)]
    if find_links is not None:
        cmd += ["--find-links", str(find_links)]
    return subprocess.run(cmd).returncode == 0


def _build_source_only(requirement_file: Path, constraint_file: Path, work: Path) -> Path:
    """Wheels, built here, of the packages of the tree published only as source; they must be pure Python."""
    built = work / "built"
    built.mkdir()
    report = work / "local.json"
    if not _resolve(requirement_file, constraint_file, [], report, None):
        raise FillError("pip cannot resolve dreamperp's requirements even for this interpreter (see its message above)")
    for item in json.loads(report.read_text())["install"]:
        meta, url = item["metadata"], item["download_info"]["url"]
        if not url.endswith(".whl") and not TORCH_STACK.match(normalize(meta["name"])):
            _pip("wheel", "-q", "--no-deps", "--wheel-dir", str(built), f"{meta['name']}=={meta['version']}")
    for wheel in built.glob("*.whl"):
        if not wheel.name.endswith("-none-any.whl"):
            raise FillError(f"{wheel.name} has only a source release and compiles: build it on a machine like the GPU machine")
    print(f"fill_wheels: built from source: {', '.join(sorted(w.name for w in built.glob('*.whl'))) or 'nothing'}", file=sys.stderr)
    return built


def fill(dest: Path, python_version: Optional[str], image: Dict[str, Optional[str]], extra_constraints: List[str], max_bytes: int) -> List[Tuple[str, int]]:
    """Empty ``dest`` of wheels and fill it (see the module docstring); returns (file, bytes) of each."""
    roots = requirements((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    target = platform_options(python_version) if python_version else []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "req.txt").write_text("\n".join(roots) + "\n")
        (work / "constraints.txt").write_text("\n".join(constraints(image) + extra_constraints) + "\n")
        report, built = work / "report.json", None
        if not _resolve(work / "req.txt", work / "constraints.txt", target, report, None):
            if not target:
                raise FillError("pip cannot resolve dreamperp's requirements (see its message above)")
            # Most likely a package of the tree has no wheel at all: build those here and try again.
            print("fill_wheels: no binary-only resolution; building the source-only packages here", file=sys.stderr)
            (work / "source.txt").write_text("\n".join(extra_constraints) + "\n")
            built = _build_source_only(work / "req.txt", work / "source.txt", work)
            if not _resolve(work / "req.txt", work / "constraints.txt", target, report, built):
                raise FillError(f"pip finds no wheels of dreamperp's requirements for CPython {python_version} on manylinux x86-64 (see its message above)")
        picked = to_fetch(json.loads(report.read_text()), roots, image, target_environment(python_version))
        (work / "pins.txt").write_text("".join(f"{name}=={version}\n" for name, version in picked))
        dest.mkdir(parents=True, exist_ok=True)
        for old in dest.iterdir():
            if old.is_file() and re.search(r"\.(whl|tar\.gz|zip)$", old.name):
                old.unlink()
        _pip("download", "-q", "--no-deps", "--dest", str(dest), *target, *(["--find-links", str(built)] if built else []), "-r", str(work / "pins.txt"))
        for sdist in [*dest.glob("*.tar.gz"), *dest.glob("*.zip")]:  # --local only: pip may pick a source release here
            _pip("wheel", "-q", "--no-deps", "--wheel-dir", str(dest), str(sdist))
            sdist.unlink()
    files, _ = check_folder(dest, max_bytes)
    return files


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/gpu_check.sh --fill-wheels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--local", action="store_true", help="fill for this interpreter and platform, with every package but torch")
    parser.add_argument("--python-version", default=os.environ.get("GPU_PYTHON_VERSION", GPU_PYTHON),
                        help="the GPU machine's CPython (default: $GPU_PYTHON_VERSION or 3.12)")
    parser.add_argument("--image-packages", type=Path, default=IMAGE_PACKAGES,
                        help="what the GPU machine already holds (default: tools/gpu_image_packages.txt)")
    parser.add_argument("--constraint", action="append", default=[], metavar="NAME==VERSION", help="pin a package of the tree (repeatable)")
    parser.add_argument("--max-mib", type=float, default=float(os.environ.get("GPU_WHEELS_MAX_MIB", MAX_MIB)),
                        help="fail when the wheels are larger (0: no limit; default: $GPU_WHEELS_MAX_MIB or 60)")
    parser.add_argument("--dest", type=Path, default=WHEELS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        image = {} if args.local else read_image_packages(args.image_packages.read_text(encoding="utf-8"))
        pins = args.constraint if args.local else SIZE_PINS + args.constraint
        files = fill(args.dest, None if args.local else args.python_version, image, pins, int(args.max_mib * MIB))
    except (FillError, OSError) as err:
        print(f"fill_wheels: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:
        print(f"fill_wheels: {' '.join(err.cmd[2:5])} failed (exit {err.returncode}; see pip's message above)", file=sys.stderr)
        return 2
    total = sum(size for _, size in files)
    for name, size in files:
        print(f"{size / MIB:8.2f} MiB  {name}")
    target = (f"this interpreter ({sys.version.split()[0]})" if args.local
              else f"CPython {args.python_version} manylinux x86-64, beside {args.image_packages.name}")
    print(f"filled {args.dest.relative_to(ROOT) if args.dest.is_relative_to(ROOT) else args.dest}: {len(files)} wheels, {total / MIB:.1f} MiB, for {target}")
    tree = checkout_bytes()
    if tree is not None:
        carried = (tree + total) / MIB
        print(f"a device call carries the checkout ({tree / MIB:.1f} MiB) and the wheels: {carried:.1f} MiB of {DEVICE_LIMIT_MIB} MiB")
        if carried > DEVICE_LIMIT_MIB and args.max_mib:
            print(f"fill_wheels: over the device call's {DEVICE_LIMIT_MIB} MiB: carry less", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
