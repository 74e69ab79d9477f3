"""Where the toy world's shipped models live: ``assets/<name>`` at the repository root."""

from __future__ import annotations

from pathlib import Path

from dreamperp.errors import UsageError

# The tool that rebuilds each asset folder, for the error message when it is missing.
REBUILD_TOOLS = {
    "toy-prior": "python tools/train_toy_prior.py --work DIR, then --work DIR --export assets/toy-prior",
    "toy-classifier": "python tools/train_toy_classifier.py --out assets/toy-classifier",
}


def assets_root() -> Path:
    """``<repository root>/assets``."""
    return Path(__file__).resolve().parents[2] / "assets"


def toy_asset_path(name: str, root: Path | None = None) -> Path:
    """The folder ``assets/<name>`` (``name`` in REBUILD_TOOLS); UsageError naming the rebuild tool when it is absent."""
    if name not in REBUILD_TOOLS:
        raise UsageError(f"unknown toy asset '{name}' (known: {', '.join(sorted(REBUILD_TOOLS))})")
    path = (root if root is not None else assets_root()) / name
    if not path.is_dir() or not any(path.iterdir()):
        raise UsageError(f"the toy asset folder '{path}' is missing: rebuild it with `{REBUILD_TOOLS[name]}`")
    return path
