"""Where the toy world's shipped models live: ``dreamperp/toy/weights/<name>``, package data of the
wheel (docs/design.md §10), found with :mod:`importlib.resources` so an installed copy finds its own."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from dreamperp.errors import UsageError

# The tool that rebuilds each asset folder, for the error message when it is missing.
REBUILD_TOOLS = {
    "toy-prior": "python tools/train_toy_prior.py --work DIR, then --work DIR --export dreamperp/toy/weights/toy-prior",
    "toy-classifier": "python tools/train_toy_classifier.py --out dreamperp/toy/weights/toy-classifier",
}


def assets_root() -> Path:
    """The folder holding the shipped toy models (``dreamperp/toy/weights`` of a checkout or an install)."""
    root = resources.files("dreamperp.toy") / "weights"
    # diffusers and safetensors read folders from disk: a zipped install has no such folder.
    if not isinstance(root, Path):
        raise UsageError(f"the toy models are inside a zip archive ({root}); install dreamperp unpacked (pip install dreamperp)")
    return root


def toy_asset_path(name: str, root: Path | None = None) -> Path:
    """The folder ``<assets_root>/<name>`` (``name`` in REBUILD_TOOLS); UsageError naming the rebuild tool when it is absent."""
    if name not in REBUILD_TOOLS:
        raise UsageError(f"unknown toy asset '{name}' (known: {', '.join(sorted(REBUILD_TOOLS))})")
    path = (root if root is not None else assets_root()) / name
    if not path.is_dir() or not any(path.iterdir()):
        raise UsageError(f"the toy asset folder '{path}' is missing: rebuild it with `{REBUILD_TOOLS[name]}`")
    return path
