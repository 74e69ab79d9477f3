"""Train the toy prior: a pixel-space text-to-image diffusion model of the toy world (docs/design.md §10).

A diffusers ``UNet2DConditionModel`` on 32x32 RGB images in [-1, 1] (no VAE), conditioned on a small
transformers ``CLIPTextModel`` trained jointly with it, epsilon prediction under a cosine
(``squaredcos_cap_v2``) 1000-step DDPM schedule, captions dropped to "" for classifier-free
guidance, an EMA of the weights (samples and exports use the EMA).

The data is regenerated from ``--seed`` (research.toy.world) and cached in the work folder. Training
checkpoints atomically every ``--ckpt-minutes`` and on SIGTERM/Ctrl-C, and ``--resume`` continues
exactly (each step's batch, noise and caption dropout come from a generator seeded by the step).
Sample grids (DDIM 50 steps, CFG 1 / 3 / 7.5 / 20; rows: scales, columns: every colour x family)
are written to ``WORK/samples/``.

    python tools/train_toy_prior.py --work /work/toy-train              # train (forever, or --steps N)
    python tools/train_toy_prior.py --work /work/toy-train --resume     # continue after a stop
    python tools/train_toy_prior.py --work /work/toy-train --export dreamperp/toy/weights/toy-prior   # write the EMA pipeline
    python tools/train_toy_prior.py --work /work/toy-train --evaluate   # score EMA samples with the toy classifier
    python tools/train_toy_prior.py --work /tmp/eval --evaluate --model dreamperp/toy/weights/toy-prior   # the same for an exported prior

``--radius-range`` / ``--fov-range`` set the dataset's cameras (default: the text-to-3D range,
radius 1.5-2.0, fov 40-70, what the shipped prior saw); SDS pulls a 3D object towards its size in
the prior's average image, so a prior for close cameras is trained on close-ups, e.g. a fine-tune
``--init-from dreamperp/toy/weights/toy-prior --radius-range 1.5,1.6 --fov-range 40,45`` (docs/design.md section 10).

The exported folder: model_index.json, unet/, text_encoder/, tokenizer/, scheduler/ (no vae/:
the model input is the image itself, in [-1, 1] at ``unet.config.sample_size``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from research.toy.captions import CaptionBias  # noqa: E402
from research.toy.world import COLOUR_NAMES, FAMILIES, sample_toy_batch  # noqa: E402

DATA_VERSION = 3  # bump when the world or the captions change: cached data is keyed by it
MARKER_FILE = "dreamperp_toy_prior.json"
MAX_LENGTH = 16  # toy captions are at most ~8 tokens
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    "clip_sample": True,  # pixel space: keep x0 estimates in the image range when sampling
    "clip_sample_range": 1.0,
}
GRID_SCALES = (1.0, 3.0, 7.5, 20.0)
#: The settings a run keeps for its whole life (restored by --resume and --init-from).
RUN_KEYS = ("seed", "num_images", "size", "channels", "text_dim", "batch_size", "uncond_prob", "lr", "warmup", "ema_decay", "attn_levels", "text_time")
#: The dataset cameras before --radius-range / --fov-range existed (DataConfig's text-to-3D ranges then): the
#: default of both options, what older runs were trained with, and the data cache names without a camera tag.
LEGACY_CAMERAS = {"radius_range": "1.5,2.0", "fov_range": "40,70"}
#: What runs saved before an option existed were trained with.
OPTION_DEFAULTS = {"attn_levels": 1, "text_time": False, **LEGACY_CAMERAS, "label_weights": "", "family_weights": ""}
#: Data settings a fine-tune may change: --resume restores them, --init-from does not (a warm start on new data).
DATA_KEYS = ("radius_range", "fov_range", "label_weights", "family_weights")


def saved_settings(saved: dict) -> dict:
    """A checkpoint's or export's saved args, with OPTION_DEFAULTS for options it predates."""
    return {**OPTION_DEFAULTS, **saved}


# ------------------------------------------------------------------------------------------ models
def unet_config(channels: list[int], size: int, text_dim: int, attn_levels: int = 1, text_time: bool = False) -> dict:
    """UNet with cross-attention in the ``attn_levels`` lowest resolutions (and in the mid block).

    ``text_time``: also pool the caption (attention pooling) into the timestep embedding, as
    DeepFloyd IF does, so it scales and shifts every ResNet block at every resolution: a global
    pathway for global attributes such as the view, next to cross-attention's local one.
    """
    n = len(channels)
    if not 1 <= attn_levels <= n:
        raise SystemExit(f"--attn-levels must be between 1 and the number of --channels ({n}), got {attn_levels}")
    plain = n - attn_levels
    return {
        "sample_size": size,
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": tuple(["DownBlock2D"] * plain + ["CrossAttnDownBlock2D"] * attn_levels),
        "up_block_types": tuple(["CrossAttnUpBlock2D"] * attn_levels + ["UpBlock2D"] * plain),
        "block_out_channels": tuple(channels),
        "layers_per_block": 2,
        "norm_num_groups": 16 if min(channels) % 16 == 0 else 8,
        "cross_attention_dim": text_dim,
        "attention_head_dim": max(1, channels[-1] // 32),  # diffusers' name for the number of heads
        **({"addition_embed_type": "text", "addition_embed_type_num_heads": 4} if text_time else {}),
    }


def text_config(vocab_size: int, dim: int) -> dict:
    return {
        "vocab_size": vocab_size,
        "hidden_size": dim,
        "intermediate_size": 2 * dim,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "max_position_embeddings": MAX_LENGTH,
        "hidden_act": "quick_gelu",
        "projection_dim": dim,
        "bos_token_id": vocab_size - 2,
        "eos_token_id": vocab_size - 1,
        "pad_token_id": vocab_size - 1,
    }


def write_tokenizer(folder: Path) -> int:
    """The project's tiny byte-level BPE (dreamperp.models.tiny) as a CLIPTokenizer folder, max length 16."""
    from dreamperp.models.tiny import BOS_TOKEN, EOS_TOKEN, tokenizer_files

    vocab, merges = tokenizer_files()
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, obj: object) -> None:
        (folder / name).write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")

    dump("vocab.json", vocab)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN, "unk_token": EOS_TOKEN}
    dump("special_tokens_map.json", special)
    dump(
        "tokenizer_config.json",
        {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "do_lower_case": True,
         "clean_up_tokenization_spaces": True, "errors": "replace"},
    )
    return len(vocab)


class Models:
    """UNet + text encoder + tokenizer, and their EMA copies."""

    def __init__(self, args: argparse.Namespace, work: Path):
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        tok_dir = work / "tokenizer"
        vocab_size = write_tokenizer(tok_dir)
        self.tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
        channels = [int(c) for c in args.channels.split(",")]
        self.unet = UNet2DConditionModel(**unet_config(channels, args.size, args.text_dim, args.attn_levels, args.text_time))
        self.text = CLIPTextModel(CLIPTextConfig(**text_config(vocab_size, args.text_dim)))
        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
        self.ema_text = copy.deepcopy(self.text).requires_grad_(False)
        self.scheduler = DDPMScheduler(**SCHEDULER_CONFIG)

    def to(self, device: str) -> Models:
        for m in (self.unet, self.text, self.ema_unet, self.ema_text):
            m.to(device)
        return self

    def ids(self, captions: list[str], device: str) -> torch.Tensor:
        return self.tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt").input_ids.to(device)

    def parameters(self):
        return list(self.unet.parameters()) + list(self.text.parameters())

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        for ema, live in ((self.ema_unet, self.unet), (self.ema_text, self.text)):
            for pe, p in zip(ema.parameters(), live.parameters()):
                pe.lerp_(p, 1.0 - decay)


def exported_meta(src: Path, option: str) -> dict:
    """The metadata (``dreamperp_toy_prior.json``) of an exported prior folder; SystemExit naming ``option`` if it is not one."""
    meta_path = src / "dreamperp_toy_prior.json"
    if not meta_path.is_file():
        raise SystemExit(f"{option}: {src} is not an exported toy prior (no {meta_path.name})")
    return json.loads(meta_path.read_text(encoding="utf-8"))


def load_exported(models: Models, src: Path, live: bool) -> None:
    """Load an exported prior's weights into the EMA models (and the live ones with ``live``)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet_sd = UNet2DConditionModel.from_pretrained(src / "unet").state_dict()
    text_sd = CLIPTextModel.from_pretrained(src / "text_encoder").state_dict()
    pairs = [(models.ema_unet, unet_sd), (models.ema_text, text_sd)]
    if live:
        pairs += [(models.unet, unet_sd), (models.text, text_sd)]
    for model, sd in pairs:
        model.load_state_dict(sd)


# -------------------------------------------------------------------------------------------- data
def parse_range(spec: str, name: str) -> list[float]:
    """``"LO,HI"`` → ``[lo, hi]`` with ``0 < lo <= hi`` (SystemExit naming the option otherwise)."""
    try:
        lo, hi = (float(v) for v in spec.split(","))
    except ValueError:
        raise SystemExit(f"{name}: {spec!r} is not LO,HI (two numbers, e.g. 1.5,1.6)") from None
    if not 0 < lo <= hi:
        raise SystemExit(f"{name}: {spec!r} must have 0 < LO <= HI")
    return [lo, hi]


def data_cameras(radius_range: str, fov_range: str):
    """The DataConfig the dataset's cameras are drawn from: default elevations, the given radius and fov ranges."""
    from dreamperp.config import DataConfig

    return DataConfig(radius_range=parse_range(radius_range, "--radius-range"), fov_range=parse_range(fov_range, "--fov-range"))


def load_data(
    work: Path, seed: int, n: int, size: int, device: str,
    radius_range: str = LEGACY_CAMERAS["radius_range"], fov_range: str = LEGACY_CAMERAS["fov_range"],
) -> dict[str, np.ndarray]:
    """The cached dataset (rendered once from ``seed``): images uint8 ``[N, size, size, 3]``, captions, ground truth."""
    cams = data_cameras(radius_range, fov_range)
    legacy = data_cameras(LEGACY_CAMERAS["radius_range"], LEGACY_CAMERAS["fov_range"])
    default = cams.radius_range == legacy.radius_range and cams.fov_range == legacy.fov_range
    tag = "" if default else "-r{:g}-{:g}-f{:g}-{:g}".format(*cams.radius_range, *cams.fov_range)
    path = work / f"data-v{DATA_VERSION}-seed{seed}-n{n}-s{size}{tag}.npz"
    if not path.is_file():
        print(f"rendering {n} toy images to {path} ...", flush=True)
        t0 = time.time()
        gen = torch.Generator().manual_seed(seed)
        parts: dict[str, list] = {k: [] for k in ("images", "family", "colour", "view", "label", "azimuth", "elevation", "radius", "fovy", "captions")}
        chunk = 1024
        for i in range(0, n, chunk):
            b = sample_toy_batch(min(chunk, n - i), size=size, generator=gen, data=cams, device=device, every_colour=True)
            parts["images"].append((b.images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy())
            for k in ("family", "colour", "view", "label", "azimuth", "elevation", "radius", "fovy"):
                parts[k].append(getattr(b, k).numpy())
            parts["captions"].append(np.array(b.captions))
            print(f"  {i + len(b.captions)}/{n} ({time.time() - t0:.0f} s)", flush=True)
        arrays = {k: np.concatenate(v) for k, v in parts.items()}
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample_grid(models: Models, prompts: list[str], scales, device: str, seed: int = 0, steps: int = 50) -> torch.Tensor:
    """DDIM samples from the EMA: ``[len(scales), len(prompts), 3, H, W]`` in [0, 1], the same noise for every scale."""
    from diffusers import DDIMScheduler

    from dreamperp.sample import clipped_epsilon, x0_limits

    limits = x0_limits(models.scheduler.config)  # clipped in x0 and ε alike, as `dreamperp sample` does
    sched = DDIMScheduler.from_config(models.scheduler.config, clip_sample=False)
    sched.set_timesteps(steps)
    alphas = sched.alphas_cumprod
    unet, text = models.ema_unet.eval(), models.ema_text.eval()
    cond = text(models.ids(prompts, device)).last_hidden_state
    uncond = text(models.ids([""], device)).last_hidden_state.expand_as(cond)
    size = unet.config.sample_size
    noise = torch.randn(len(prompts), 3, size, size, generator=torch.Generator().manual_seed(seed)).to(device)
    rows = []
    for s in scales:
        x = noise.clone()
        for t in sched.timesteps:
            eps = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
            eu, ec = eps.chunk(2)
            x = sched.step(clipped_epsilon(eu + s * (ec - eu), x, alphas[t], limits), t, x).prev_sample
        rows.append((x.clamp(-1, 1) + 1) / 2)
    return torch.stack(rows).cpu()


def save_grid(grid: torch.Tensor, path: Path) -> None:
    from PIL import Image

    r, c = grid.shape[:2]
    img = grid.permute(0, 3, 1, 4, 2).reshape(r * grid.shape[3], c * grid.shape[4], 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 255).round().byte().numpy()).resize((img.shape[1] * 2, img.shape[0] * 2), Image.NEAREST).save(path)


def grid_prompts() -> list[str]:
    return [f"a {c} {f}" for f in FAMILIES for c in COLOUR_NAMES]


# ------------------------------------------------------------------------------------- checkpoints
def checkpoint_path(work: Path) -> Path:
    return work / "checkpoint.pt"


def save_checkpoint(work: Path, models: Models, opt, step: int, args: argparse.Namespace) -> None:
    state = {
        "step": step,
        "args": vars(args),
        "unet": models.unet.state_dict(),
        "text": models.text.state_dict(),
        "ema_unet": models.ema_unet.state_dict(),
        "ema_text": models.ema_text.state_dict(),
        "opt": opt.state_dict(),
    }
    tmp = work / f".checkpoint.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, checkpoint_path(work))


def _spec_weights(spec: str, values: torch.Tensor, names: tuple[str, ...], option: str, what: str) -> torch.Tensor | None:
    """Per-image weights ``[N]`` from ``"name=W,..."``: images whose ``values`` index ``names[i]`` get W (others 1); None for ``""``."""
    if not spec:
        return None
    w = torch.ones(values.shape, dtype=torch.float64)
    for item in spec.split(","):
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in names:
            raise SystemExit(f"{option}: {item!r} is not {what}=WEIGHT with {what} one of {', '.join(names)}")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not weight > 0:
            raise SystemExit(f"{option}: {item!r}: the weight must be a positive number")
        w[values == names.index(name.strip())] = weight
    return w


def caption_label_weights(spec: str, labels: torch.Tensor) -> torch.Tensor | None:
    """Per-image sampling weights ``[N]`` from ``"side=2,back=4"`` by caption suffix label (None: uniform).

    Every image whose caption ends in that view suffix is drawn that many times more often. Within
    one caption the images keep equal weights, so p(image | caption), the caption bias included, is
    unchanged: only how often each caption is trained changes (the rare suffixes get more steps).
    """
    from research.toy.captions import VIEWS

    return _spec_weights(spec, labels, tuple(VIEWS), "--label-weights", "VIEW")


def sampling_weights(label_spec: str, family_spec: str, labels: torch.Tensor, families: torch.Tensor) -> torch.Tensor | None:
    """The product of the --label-weights and --family-weights image weights ``[N]`` (None: uniform draws).

    A family weight changes only how often each family is trained: within a family every image
    keeps its caption weight, so p(image | caption) is unchanged by either option.
    """
    lw = caption_label_weights(label_spec, labels)
    fw = _spec_weights(family_spec, families, FAMILIES, "--family-weights", "FAMILY")
    if lw is None:
        return fw
    if fw is None:
        return lw
    return lw * fw


def lr_at(step: int, args: argparse.Namespace) -> float:
    return args.lr * min(1.0, (step + 1) / args.warmup)


# ---------------------------------------------------------------------------------------- training
def train(args: argparse.Namespace) -> None:
    work = Path(args.work)
    data_cameras(args.radius_range, args.fov_range)  # a bad range fails before anything is written
    work.mkdir(parents=True, exist_ok=True)
    device = args.device
    ckpt = checkpoint_path(work)
    state = None
    if not args.resume and ckpt.is_file():
        raise SystemExit(f"{ckpt} exists: pass --resume to continue it, or choose another --work")
    if args.resume:
        if not ckpt.is_file():
            raise SystemExit(f"--resume: no checkpoint at {ckpt}")
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        saved = saved_settings(state["args"])
        for k in RUN_KEYS + DATA_KEYS:
            setattr(args, k, saved[k])  # the run's own settings; --steps, --device, timings may change
    init = None
    if args.init_from:
        # Warm start from an exported (committed) prior: its EMA weights become both the live and the
        # EMA weights, AdamW starts afresh, and the step count and data order continue from its step.
        # This is how a later session continues training when the work folder is gone.
        if args.resume:
            raise SystemExit("--init-from starts a new work folder from an exported prior; it cannot be combined with --resume")
        src = Path(args.init_from)
        init = exported_meta(src, "--init-from")
        init_args = saved_settings(init["train_args"])
        for k in RUN_KEYS:
            setattr(args, k, init_args[k])
    torch.manual_seed(args.seed)
    models = Models(args, work)
    if init is not None:
        load_exported(models, src, live=True)
    if state is not None:
        models.unet.load_state_dict(state["unet"])
        models.text.load_state_dict(state["text"])
        models.ema_unet.load_state_dict(state["ema_unet"])
        models.ema_text.load_state_dict(state["ema_text"])
    models.to(device)
    opt = torch.optim.AdamW(models.parameters(), lr=args.lr, weight_decay=0.01)
    if state is not None:
        opt.load_state_dict(state["opt"])
    step = int(state["step"]) if state is not None else int(init["step"]) if init is not None else 0
    del state
    n_unet = sum(p.numel() for p in models.unet.parameters())
    n_text = sum(p.numel() for p in models.text.parameters())
    print(f"unet {n_unet / 1e6:.2f} M params, text encoder {n_text / 1e6:.2f} M; device {device}; step {step}", flush=True)

    data = load_data(work, args.seed, args.num_images, args.size, "cpu", args.radius_range, args.fov_range)
    images = torch.from_numpy(data["images"]).permute(0, 3, 1, 2).contiguous()  # uint8 [N, 3, H, W]
    captions = [str(c) for c in data["captions"]]
    ids_all = models.ids(captions, "cpu")
    ids_empty = models.ids([""], "cpu")[0]
    weights = sampling_weights(args.label_weights, args.family_weights, torch.from_numpy(data["label"]), torch.from_numpy(data["family"]))
    alphas = models.scheduler.alphas_cumprod.float()
    with (work / "args.json").open("w") as f:
        json.dump(vars(args), f, indent=1)

    stop = {"now": False}

    def on_signal(signum, frame):  # finish the step, checkpoint, exit
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    last_ckpt = time.time()
    t_log, losses = time.time(), []
    log = (work / "log.jsonl").open("a")
    while step < args.steps and not stop["now"]:
        # Everything random about this step comes from its own generator: resuming repeats it exactly.
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        if weights is None:
            idx = torch.randint(len(images), (args.batch_size,), generator=g)
        else:
            idx = torch.multinomial(weights, args.batch_size, replacement=True, generator=g)
        x0 = images[idx].float() / 127.5 - 1.0
        flip = torch.rand(args.batch_size, generator=g) < 0.5  # objects are mirror-symmetric: a flip is the mirrored azimuth
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        drop = torch.rand(args.batch_size, generator=g) < args.uncond_prob
        ids = torch.where(drop[:, None], ids_empty[None], ids_all[idx])
        t = torch.randint(0, len(alphas), (args.batch_size,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        xt, t, noise, ids = xt.to(device), t.to(device), noise.to(device), ids.to(device)
        models.unet.train()
        models.text.train()
        # bf16 autocast: ~1.5x faster on CPUs with avx512_bf16; weights, EMA and AdamW stay fp32.
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16):
            cond = models.text(ids).last_hidden_state
            pred = models.unet(xt, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred.float(), noise)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(models.parameters(), 1.0)
        opt.step()
        step += 1
        models.update_ema(min(args.ema_decay, (1 + step) / (10 + step)))
        losses.append(loss.detach().item())
        if step % args.log_every == 0:
            dt = (time.time() - t_log) / len(losses)
            rec = {"step": step, "loss": sum(losses) / len(losses), "s_per_step": dt, "lr": lr_at(step, args), "time": time.time()}
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            t_log, losses = time.time(), []
        if step % args.sample_every == 0:
            t0 = time.time()
            save_grid(sample_grid(models, grid_prompts(), GRID_SCALES, device), work / "samples" / f"step-{step:07d}.png")
            print(f"samples at step {step} ({time.time() - t0:.0f} s)", flush=True)
            t_log = time.time()  # sampling time is not step time
        if time.time() - last_ckpt > 60 * args.ckpt_minutes:
            save_checkpoint(work, models, opt, step, args)
            last_ckpt = time.time()
    save_checkpoint(work, models, opt, step, args)
    print(f"checkpoint at step {step} in {ckpt}", flush=True)


# ------------------------------------------------------------------------------------------ export
def export(args: argparse.Namespace) -> None:
    """Write the EMA weights of the work folder's checkpoint as a pixel-space pipeline folder (atomic swap)."""
    import diffusers
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    work = Path(args.work)
    ckpt = checkpoint_path(work)
    if not ckpt.is_file():
        raise SystemExit(f"--export: no checkpoint at {ckpt} (train first)")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    saved = argparse.Namespace(**saved_settings(state["args"]))
    out = Path(args.export)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        vocab_size = write_tokenizer(tmp / "tokenizer")
        channels = [int(c) for c in saved.channels.split(",")]
        unet = UNet2DConditionModel(**unet_config(channels, saved.size, saved.text_dim, saved.attn_levels, saved.text_time))
        unet.load_state_dict(state["ema_unet"])
        text = CLIPTextModel(CLIPTextConfig(**text_config(vocab_size, saved.text_dim)))
        text.load_state_dict(state["ema_text"])
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        text.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        DDPMScheduler(**SCHEDULER_CONFIG).save_pretrained(tmp / "scheduler")
        index = {
            "_class_name": "DreamperpToyPixelPipeline",
            "_diffusers_version": diffusers.__version__,
            "scheduler": ["diffusers", "DDPMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        from dataclasses import asdict

        info = {
            "what": "dreamperp toy prior: pixel-space text-to-image diffusion of the toy world (EMA weights)",
            "input": "RGB image in [-1, 1] at unet.config.sample_size; epsilon prediction",
            "step": int(state["step"]),
            "train_args": state["args"],
            "data_version": DATA_VERSION,
            "caption_bias": asdict(CaptionBias()),
            "rebuild": "python tools/train_toy_prior.py --work DIR; then --work DIR --export dreamperp/toy/weights/toy-prior",
        }
        (tmp / MARKER_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.rename(out, old)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        for f in tmp.rglob("*"):  # safetensors writes files private too
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"exported EMA weights of step {state['step']} to {out} ({size / 1e6:.1f} MB)")


def evaluate(args: argparse.Namespace) -> None:
    """Sample every "a {colour} {family}" from the EMA of WORK's checkpoint (or of the exported prior
    ``--model``) and score the samples with the toy classifier.

    Prints the share classified as the right family and colour (the issue's bar: >= 90% at 50 DDIM
    steps, scale 7.5), the view distribution of the samples, and writes both with a grid to WORK/eval/.
    """
    from dreamperp.toy.assets import toy_asset_path
    from research.toy.captions import VIEWS
    from research.toy.classifier import ToyClassifier

    work = Path(args.work)
    device = args.device
    if args.model:  # an exported prior, e.g. the shipped dreamperp/toy/weights/toy-prior: no work folder needed
        meta = exported_meta(Path(args.model), "--model")
        models = Models(argparse.Namespace(**saved_settings(meta["train_args"])), work)
        load_exported(models, Path(args.model), live=False)
        step = int(meta["step"])
    else:
        ckpt = checkpoint_path(work)
        if not ckpt.is_file():
            raise SystemExit(f"--evaluate: no checkpoint at {ckpt} (train first, or pass --model DIR)")
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        models = Models(argparse.Namespace(**saved_settings(state["args"])), work)
        models.ema_unet.load_state_dict(state["ema_unet"])
        models.ema_text.load_state_dict(state["ema_text"])
        step = int(state["step"])
    models.to(device)
    classifier = ToyClassifier.load(toy_asset_path("toy-classifier"), device)
    prompts = grid_prompts()
    n = args.eval_samples
    t0 = time.time()
    samples = torch.cat([sample_grid(models, prompts, (args.eval_scale,), device, seed=1000 + i)[0] for i in range(n)])  # [n * P, 3, H, W]
    pred = classifier.predict(samples.to(device))
    fam = torch.tensor([FAMILIES.index(p.split()[2]) for p in prompts]).repeat(n)
    col = torch.tensor([COLOUR_NAMES.index(p.split()[1]) for p in prompts]).repeat(n)
    ok = (pred["family"].cpu() == fam) & (pred["colour"].cpu() == col)
    views = {v: float((pred["view"].cpu() == i).float().mean()) for i, v in enumerate(VIEWS)}
    per_prompt = {p: float(ok.view(n, -1)[:, j].float().mean()) for j, p in enumerate(prompts)}
    result = {"step": step, "scale": args.eval_scale, "samples_per_prompt": n, "ddim_steps": 50,
              "right_family_and_colour": float(ok.float().mean()), "per_prompt": per_prompt, "views": views, "seconds": time.time() - t0}
    out = work / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"step-{step:07d}-scale{args.eval_scale:g}.json").write_text(json.dumps(result, indent=2) + "\n")
    save_grid(samples.view(n, len(prompts), *samples.shape[1:]), out / f"step-{step:07d}-scale{args.eval_scale:g}.png")
    print(json.dumps({k: v for k, v in result.items() if k != "per_prompt"}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/work/toy-train", help="work folder: data cache, checkpoint, log, sample grids")
    p.add_argument("--resume", action="store_true", help="continue from WORK/checkpoint.pt (with its own settings)")
    p.add_argument("--init-from", metavar="DIR", help="start WORK from an exported prior (e.g. the shipped dreamperp/toy/weights/toy-prior)")
    p.add_argument("--export", metavar="DIR", help="write the EMA pipeline folder of WORK's checkpoint to DIR and exit")
    p.add_argument("--evaluate", action="store_true", help="sample every colour x family from WORK's EMA, score with the shipped toy classifier, exit")
    p.add_argument("--model", metavar="DIR", help="--evaluate: score this exported prior (e.g. dreamperp/toy/weights/toy-prior) instead of WORK's checkpoint")
    p.add_argument("--eval-samples", type=int, default=8, help="--evaluate: samples per prompt")
    p.add_argument("--eval-scale", type=float, default=7.5, help="--evaluate: classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-images", type=int, default=16000, help="size of the rendered dataset")
    p.add_argument("--size", type=int, default=32, help="image size (UNet sample_size)")
    p.add_argument("--radius-range", default=LEGACY_CAMERAS["radius_range"], metavar="LO,HI",
                   help="camera distances of the dataset (default %(default)s: the text-to-3D range the shipped prior saw; configs/toy.yaml uses 1.5,1.6)")
    p.add_argument("--fov-range", default=LEGACY_CAMERAS["fov_range"], metavar="LO,HI",
                   help="vertical fov in degrees of the dataset's cameras (default %(default)s; configs/toy.yaml: 40,45)")
    p.add_argument("--channels", default="32,64,64", help="UNet block_out_channels")
    p.add_argument("--attn-levels", type=int, default=1, help="resolutions with cross-attention to the caption, counted from the lowest (1: the last only)")
    p.add_argument("--text-time", action="store_true", help="also add the pooled caption to the timestep embedding (global conditioning, as DeepFloyd IF)")
    p.add_argument("--text-dim", type=int, default=64, help="text encoder width = UNet cross_attention_dim")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--uncond-prob", type=float, default=0.2, help="share of captions replaced by '' (classifier-free guidance)")
    p.add_argument("--label-weights", default="", metavar="VIEW=W,...",
                   help="draw images whose caption has that view suffix W times as often, e.g. side=2,back=4 (conditionals unchanged)")
    p.add_argument("--family-weights", default="", metavar="FAMILY=W,...",
                   help="draw images of that family W times as often, e.g. bird=3 (multiplies --label-weights; conditionals unchanged)")
    p.add_argument("--steps", type=int, default=10**9, help="stop after this many steps in total")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the training forward (fp32 weights); may change on --resume")
    p.add_argument("--ckpt-minutes", type=float, default=5.0)
    p.add_argument("--sample-every", type=int, default=1000, help="steps between sample grids")
    p.add_argument("--log-every", type=int, default=25)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.export:
        export(args)
    elif args.evaluate:
        evaluate(args)
    else:
        train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
