"""The full-size prior and TAESD in random weights, for timings and the GPU check (docs/design.md §13).

Speed and memory do not depend on weight values, so a machine without the real weights can time a
step (``--bench``) or run the whole pipeline, training then export (:func:`random_weight_run`,
``tools/gpu_check.sh``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, List

from dreamperp.config import Config, load_config
from dreamperp.errors import UsageError

RANDOM_TAESD = "taesd-random-v1"  # folder name under the dreamperp cache


def tiny_encoder_here(model: str) -> bool:
    """Whether AutoencoderTiny ``model`` (hub id or folder) loads without the network."""
    if Path(model).expanduser().is_dir():
        return True
    from huggingface_hub import try_to_load_from_cache

    from dreamperp.models.loading import hub_cache_dir

    try:
        return isinstance(try_to_load_from_cache(model, "config.json", cache_dir=hub_cache_dir()), str)
    except (OSError, ValueError):
        return False


def random_tiny_encoder() -> Path:
    """A folder with diffusers' AutoencoderTiny (the TAESD architecture) in random weights, written
    once into the dreamperp cache: speed does not depend on weight values."""
    import tempfile

    import torch
    from diffusers import AutoencoderTiny

    from dreamperp.models.tiny import cache_root

    final = cache_root() / RANDOM_TAESD
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoencoderTiny().save_pretrained(tmp)
    try:
        os.rename(tmp, final)
    except OSError:  # another process was first
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_bench_trainer(cfg: Config, full_size: bool) -> Any:
    """A Trainer for ``cfg``; with ``full_size`` its prior is the SD 2.1-base architecture with random
    weights. ``guidance.encoder: tiny`` without TAESD's weights here gets TAESD with random weights
    (``cfg.guidance.tiny_encoder_model`` is pointed at it)."""
    from dreamperp.train.trainer import Trainer

    if cfg.data.type != "text":
        raise UsageError("--bench times text-to-3D steps: use a config with data.type=text")
    if cfg.guidance.encoder == "tiny" and not tiny_encoder_here(cfg.guidance.tiny_encoder_model):
        cfg.guidance.tiny_encoder_model = str(random_tiny_encoder())
    prior = None
    if full_size:
        from dreamperp.device import resolve_device
        from dreamperp.guidance.prior import load_prior
        from dreamperp.models.full_size import full_size_components

        device = resolve_device(cfg.device)
        prior = load_prior(cfg.guidance, cfg.prompt, cfg.negative_prompt, device, components=full_size_components(device, cfg.guidance.dtype))
    return Trainer(cfg, prior=prior)


def random_weight_run(config: str, overrides: List[str], run_dir: str, full_size: bool = True) -> int:
    """Train ``config`` in ``run_dir`` with the full-size prior in random weights, then export its
    mesh and video as ``dreamperp train`` does: the whole pipeline's speed and memory without the
    real weights (``tools/gpu_check.sh``). Returns the exit code."""
    from dreamperp.commands.train import export_at_end
    from dreamperp.runs.folder import RunDir
    from dreamperp.train.loop import TrainLoop

    cfg = load_config(config, overrides)
    trainer = build_bench_trainer(cfg, full_size=full_size)
    run = RunDir(Path(run_dir))
    for sub in (run.ckpt_dir, run.val_dir, run.export_dir):
        sub.mkdir(parents=True, exist_ok=True)
    run.write_config(cfg)
    with run.lock():
        code = TrainLoop(trainer, run).fit()
        if code == 0:
            export_at_end(trainer, run)
    return code
