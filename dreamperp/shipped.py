"""The configs that ship inside the package (``dreamperp/configs/*.yaml``) and how a config argument
finds them, so ``dreamperp train toy`` works from any folder after a wheel install and
``dreamperp train configs/toy.yaml`` still works in a checkout (docs/design.md §12)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Dict, Optional

CONFIG_SUFFIXES = (".yaml", ".yml")


def configs_folder() -> Path:
    """The shipped configs' folder, inside the installed (or checked-out) package."""
    return Path(str(resources.files("dreamperp") / "configs"))


def shipped_configs() -> Dict[str, Path]:
    """Every shipped config by name (file name less ``.yaml``), sorted by name."""
    folder = configs_folder()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir(), key=lambda p: p.stem) if p.suffix == ".yaml" and p.is_file()}


def shipped_config(arg: str | Path) -> Optional[Path]:
    """The shipped config that ``arg`` names, or None. A name counts as ``NAME``, ``NAME.yaml`` or
    ``configs/NAME.yaml`` (the path of the same file in a checkout before configs/ moved into the
    package); any other path never does, so a missing file of the user's is reported as missing."""
    parts = Path(str(arg)).parts
    if len(parts) == 2 and parts[0] == "configs":
        parts = parts[1:]
    if len(parts) != 1:
        return None
    name = parts[0]
    for suffix in CONFIG_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return shipped_configs().get(name)


def find_config(arg: str | Path) -> Path:
    """``arg`` when it is a file; else the shipped config it names; else ``arg`` as given (the
    caller reports it missing)."""
    path = Path(str(arg)).expanduser()
    if path.is_file():
        return path
    return shipped_config(arg) or path


def summary(path: Path) -> str:
    """The first comment line of a config file: what it is for."""
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text.startswith("#"):
            return text.lstrip("#").strip()
        if text:
            break
    return ""


def names_hint() -> str:
    """``default, reconstruct, ...`` for error messages."""
    return ", ".join(shipped_configs()) or "none found"
