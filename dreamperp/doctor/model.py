"""The config's prior: where it comes from, whether it is here, and ``--fetch`` (docs/design.md §13).

Tiny and toy models, a local diffusers folder, or a hub id: cached or not, its size, gated or not
and the download size (asked of the hub only when online), and a withdrawn id's successor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from dreamperp.config import Config
from dreamperp.errors import UsageError, first_line


def hub_model_facts(model_id: str) -> Optional[Dict[str, Any]]:
    """Gated or not and the download size of what dreamperp fetches, from the hub; None offline or
    on any failure (the hub is optional here)."""
    from dreamperp.models.loading import hub_offline

    if hub_offline():
        return None
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError

        info = HfApi().model_info(model_id, files_metadata=True, timeout=10)
    except RepositoryNotFoundError:
        return {"gated": None, "download_bytes": None, "error": f"model '{model_id}' was not found on the Hugging Face hub"}
    except Exception as err:  # unreachable hub, gated without a token, ...: reported, not fatal
        return {"gated": None, "download_bytes": None, "error": f"the Hugging Face hub could not be asked about '{model_id}' ({first_line(err)[:120]})"}
    wanted = ("model_index.json", "unet/", "vae/", "text_encoder/", "tokenizer/", "scheduler/")
    size = 0
    for f in info.siblings or []:
        name = f.rfilename
        if name.startswith(wanted) and ".fp16." not in name and not name.endswith((".bin", ".ckpt", ".msgpack", ".onnx")):
            size += int(getattr(f, "size", 0) or 0)
    return {"gated": bool(info.gated), "download_bytes": size or None, "error": None}


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder``, symlinks followed (the hub cache links into blobs/)."""
    total = 0
    for p in folder.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def model_section(cfg: Config) -> Tuple[Dict[str, Any], Optional[str]]:
    """The prior of ``cfg``: where it comes from and whether it is here. Returns (section, problem)."""
    from dreamperp.models import loading
    from dreamperp.models.tiny import MODEL_NAMES, tiny_model_path

    model = str(cfg.guidance.model).strip()
    sec: Dict[str, Any] = {"name": model, "kind": None, "loads": model, "withdrawn": False, "successor": None,
                           "cached": None, "path": None, "size_bytes": None, "gated": None, "download_bytes": None}
    if cfg.data.type != "text":
        return {**sec, "kind": "none", "loads": None, "why": "data.type=multiview trains without a prior"}, None
    if model in MODEL_NAMES:
        path = tiny_model_path(layout=MODEL_NAMES[model])  # seconds, offline: what any run does first
        return {**sec, "kind": "tiny", "cached": True, "path": str(path), "size_bytes": folder_bytes(path), "gated": False}, None
    if model == "toy":
        path = loading.toy_prior_path()
        if not (path / "model_index.json").is_file():
            return {**sec, "kind": "toy", "cached": False}, f"the toy prior is missing from '{path}'"
        return {**sec, "kind": "toy", "cached": True, "path": str(path), "size_bytes": folder_bytes(path), "gated": False}, None
    if Path(model).expanduser().exists() or loading.looks_like_path(model):
        folder = Path(model).expanduser()
        sec.update(kind="folder", path=str(folder))
        try:
            loading.check_pipeline_folder(folder)
        except UsageError as err:
            return {**sec, "cached": False}, str(err)
        return {**sec, "cached": True, "size_bytes": folder_bytes(folder), "gated": False}, None
    sec.update(kind="hub", successor=loading.WITHDRAWN_MODELS.get(model), withdrawn=model in loading.WITHDRAWN_MODELS)
    try:
        choice = loading.choose_hub_model(model)
    except UsageError as err:  # withdrawn, neither cached, offline
        return {**sec, "cached": False}, str(err)
    sec["loads"] = choice.model
    if choice.note:
        sec["note"] = choice.note
    snapshot = loading.cached_snapshot(choice.model)
    facts = hub_model_facts(choice.model) if snapshot is None or not choice.successor else None
    if facts:
        sec.update(gated=facts["gated"], download_bytes=facts["download_bytes"])
    if snapshot is not None:
        return {**sec, "cached": True, "path": str(snapshot), "size_bytes": folder_bytes(snapshot)}, None
    sec["cached"] = False
    if loading.hub_offline():
        return sec, (
            f"model '{choice.model}' is not in the Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1): fetch it once "
            f"with network access, `HF_HUB_OFFLINE=0 dreamperp doctor --fetch {choice.model}`"
        )
    if facts and facts["error"]:
        if "not found" in facts["error"]:
            return sec, f"{facts['error']}: check guidance.model, or point it at a local diffusers folder"
        sec["why"] = f"{facts['error']}: the first run downloads the weights and needs it"
    if facts and facts["gated"] and not os.environ.get("HF_TOKEN"):
        sec["why"] = "gated: accept its licence on the hub and run `hf auth login` before the first run"
    return sec, None


def fetch_model(model: str) -> str:
    """``--fetch MODEL``: the local folder of ``model``'s pipeline, its files downloaded once when it
    is a hub id that is not in the cache."""
    from dreamperp.models.loading import resolve_model

    return resolve_model(model)
