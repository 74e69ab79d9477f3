"""Tiny randomly initialised offline diffusion pipelines, one per supported layout.

Used by the tests and ``configs/tiny.yaml`` so that everything runs on a CPU without model
weights. Every folder has the diffusers layout and loads offline:

- ``sd`` (``guidance.model: tiny``): Stable Diffusion, ``model_index.json`` + ``unet/``, ``vae/``,
  ``text_encoder/`` (CLIP), ``tokenizer/``, ``scheduler/``; loads with
  ``StableDiffusionPipeline.from_pretrained(path)``. Latents are 4x8x8, images 64x64.
- ``if`` (``tiny-if``): DeepFloyd IF stage I, pixel space with no ``vae/``: a T5 encoder with a
  unigram T5 tokenizer, a learned-variance UNet (6 output channels for 3 input ones) on 16x16
  images in [-1, 1], IF's DDPM scheduler.
- ``pixel`` (``tiny-pixel``): the toy prior's layout, pixel space with no ``vae/``: a CLIP text
  encoder and the byte-level BPE tokenizer, an epsilon UNet on 16x16 images, a cosine DDPM scheduler.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

from dreamperp.errors import UsageError
from dreamperp.models.quiet import no_transformers_progress_bars

# Bump when the architecture, tokenizer or file layout changes: cached models are keyed by it.
TINY_FORMAT_VERSION = 1
#: The layouts build_tiny_pipeline can write, and the guidance.model name of each.
LAYOUTS = ("sd", "if", "pixel")
MODEL_NAMES = {"tiny": "sd", "tiny-if": "if", "tiny-pixel": "pixel"}
# Marker file that says "this folder was written by build_tiny_pipeline" (safe to overwrite).
MARKER_FILE = "dreamperp_tiny.json"

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MAX_LENGTH = 77
NUM_MERGES = 400

# Text the tokenizer's merges are learned from: words that prompts are made of, so typical
# prompts tokenize to a few tokens per word instead of one token per letter.
_BPE_CORPUS = """
a photo of a the an and with on in at to for from by is are of front side back overhead view
a dslr photo of a cute corgi dog puppy cat kitten bird peacock owl parrot eagle horse cow
a zoomed out photo of a delicious hamburger pizza cake ice cream cup coffee tea apple banana
a high quality render of a wooden chair table lamp car truck bicycle motorcycle airplane boat
a portrait of a man woman child person wearing glasses hat sunglasses crown helmet scarf
a beautiful detailed painting of a castle house tower tree flower rose garden mountain river
a small red blue green yellow white black orange purple pink brown gray golden silver colored
a 3d model of a robot astronaut knight dragon dinosaur teddy bear toy statue sculpture vase
highly detailed realistic photorealistic studio lighting sharp focus 4k 8k trending on artstation
blurry low quality ugly deformed bad anatomy cropped watermark text signature out of frame
the quick brown fox jumps over the lazy dog while the rain falls in the sleeping city tonight
standing sitting running flying smiling looking at the camera on a white background isolated
there their they this that these those what when where which while who why how has have had
ing tion ness ment able ful less ous ive ally ing ed er est ly re un in dis over under
"""


def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2/CLIP byte → printable unicode character map (the byte-level base alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _learn_merges(text: str, num_merges: int) -> List[Tuple[str, str]]:
    """Plain BPE on the corpus words (CLIP style: the last symbol of a word carries ``</w>``).

    Ties are broken by the pair itself so the merges are the same on every machine.
    """
    byte_map = _bytes_to_unicode()
    words = Counter(
        "".join(byte_map[b] for b in w.encode("utf-8")) for w in re.findall(r"[a-z]+|[0-9]", text.lower())
    )
    splits = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in words}
    merges: List[Tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for w, freq in words.items():
            sym = splits[w]
            for a, b in zip(sym, sym[1:]):
                pairs[(a, b)] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, sym in splits.items():
            out: List[str] = []
            i = 0
            while i < len(sym):
                if i + 1 < len(sym) and (sym[i], sym[i + 1]) == best:
                    out.append(sym[i] + sym[i + 1])
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            splits[w] = tuple(out)
    return merges


def tokenizer_files() -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    """The tiny tokenizer's vocab (token → id) and merges, laid out like CLIP's.

    Order: 256 byte symbols, the same with ``</w>``, merge results, then ``<|startoftext|>`` and
    ``<|endoftext|>`` last (CLIPTextModel pools at the highest id when eos_token_id is legacy).
    """
    base = list(_bytes_to_unicode().values())
    tokens = base + [b + "</w>" for b in base]
    merges = _learn_merges(_BPE_CORPUS, NUM_MERGES)
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {t: i for i, t in enumerate(tokens)}, merges


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_tokenizer(folder: Path) -> int:
    """Write vocab.json, merges.txt and the tokenizer configs; returns the vocab size."""
    vocab, merges = tokenizer_files()
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN, "unk_token": EOS_TOKEN}
    _write_json(folder / "special_tokens_map.json", special)
    _write_json(
        folder / "tokenizer_config.json",
        {
            **special,
            "tokenizer_class": "CLIPTokenizer",
            "model_max_length": MAX_LENGTH,
            "do_lower_case": True,
            "clean_up_tokenization_spaces": True,
            "errors": "replace",
        },
    )
    return len(vocab)


def _model_configs(vocab_size: int) -> Dict[str, dict]:
    """Constructor arguments of the three networks (small enough for CPU, SD-shaped)."""
    bos_id, eos_id = vocab_size - 2, vocab_size - 1
    return {
        "unet": dict(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            norm_num_groups=8,
            cross_attention_dim=32,
            attention_head_dim=(2, 4),  # diffusers' name for the number of heads: 16 channels each
        ),
        "vae": dict(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 16),  # four blocks: vae_scale_factor 2**3 = 8
            layers_per_block=1,
            norm_num_groups=4,
            latent_channels=4,
            sample_size=64,
            scaling_factor=0.18215,
        ),
        "text_encoder": dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_LENGTH,
            hidden_act="quick_gelu",
            projection_dim=32,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
        ),
    }


# The DDIM scheduler of Stable Diffusion 1.x/2.x (scheduler/scheduler_config.json of SD 2.1-base).
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)


def _reinit_zero_weights(module, generator) -> None:
    """Give zero-initialised output layers small random weights.

    Random-init diffusers models start some projections at zero; the tiny model must give
    prompt- and input-dependent outputs so guidance tests see real differences.
    """
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2 and not p.any():
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=generator) / fan_in**0.5)


def _t5_tokenizer(folder: Path) -> int:
    """Write a small unigram T5 tokenizer (``tokenizer.json``; loads offline without sentencepiece).

    Pieces: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, the corpus words (as "▁word"), then single
    characters, so any lower-case prompt tokenizes; returns the vocab size.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    words = sorted(set(re.findall(r"[a-z]+", _BPE_CORPUS.lower())))
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789,.!?-'\"()"))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -8.0)]
    pieces += [("\u2581" + w, -5.0) for w in words] + [(c, -10.0) for c in chars]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    fast = T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0, model_max_length=MAX_LENGTH)
    fast.save_pretrained(folder)
    return len(pieces)


def _pixel_unet_config(learned_variance: bool, cross_attention_dim: int, encoder_hid_dim: int | None) -> dict:
    """A small pixel-space UNet on 16x16 RGB; IF-shaped (simple cross-attention, text-embedding
    time conditioning, 6 output channels) when ``learned_variance``."""
    if learned_variance:
        return dict(
            sample_size=16, in_channels=3, out_channels=6,
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
            cross_attention_dim=cross_attention_dim, encoder_hid_dim=encoder_hid_dim, attention_head_dim=16,
            addition_embed_type="text", addition_embed_type_num_heads=2, resnet_time_scale_shift="scale_shift", act_fn="gelu",
        )
    return dict(
        sample_size=16, in_channels=3, out_channels=3,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=cross_attention_dim, attention_head_dim=(2, 4),
    )


#: DeepFloyd IF stage I's scheduler (scheduler/scheduler_config.json of IF-I-XL-v1.0).
IF_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon", variance_type="learned_range",
    clip_sample=True, clip_sample_range=1.0, thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5,
)
#: The toy prior's scheduler: cosine DDPM, epsilon, samples clipped to the image range.
PIXEL_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon", clip_sample=True, clip_sample_range=1.0)


def build_tiny_pipeline(path: str | os.PathLike, seed: int = 0, layout: str = "sd") -> Path:
    """Write the tiny random pipeline of ``layout`` (see the module docstring) to ``path``
    (created; existing files are replaced).

    Same ``seed`` and layout → byte-identical files. Does not touch the global torch RNG.
    """
    import diffusers
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    if layout not in LAYOUTS:
        raise UsageError(f"unknown tiny model layout {layout!r}: use {', '.join(LAYOUTS)}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if layout == "if":
        vocab_size = _t5_tokenizer(out / "tokenizer")
    else:
        vocab_size = _write_tokenizer(out / "tokenizer")
    configs = _model_configs(vocab_size)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed + 1)
        vae = None
        if layout == "sd":
            unet = UNet2DConditionModel(**configs["unet"])
            vae = AutoencoderKL(**configs["vae"])
            text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        elif layout == "if":
            t5 = T5Config(
                vocab_size=vocab_size, d_model=24, d_kv=8, d_ff=48, num_layers=2, num_heads=3, relative_attention_num_buckets=8,
                feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1,
            )
            text_encoder = T5EncoderModel(t5)
            unet = UNet2DConditionModel(**_pixel_unet_config(True, cross_attention_dim=32, encoder_hid_dim=t5.d_model))
        else:
            text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
            unet = UNet2DConditionModel(**_pixel_unet_config(False, cross_attention_dim=32, encoder_hid_dim=None))
        for m in (unet, vae, text_encoder):
            if m is not None:
                _reinit_zero_weights(m, gen)

    unet.save_pretrained(out / "unet", safe_serialization=True)
    if vae is not None:
        vae.save_pretrained(out / "vae", safe_serialization=True)
    with no_transformers_progress_bars():
        text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    if layout == "sd":
        DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(out / "scheduler")
    else:
        DDPMScheduler(**(IF_SCHEDULER_CONFIG if layout == "if" else PIXEL_SCHEDULER_CONFIG)).save_pretrained(out / "scheduler")

    index: Dict[str, object] = {"_diffusers_version": diffusers.__version__, "unet": ["diffusers", "UNet2DConditionModel"]}
    if layout == "sd":
        index.update(
            _class_name="StableDiffusionPipeline", feature_extractor=[None, None], image_encoder=[None, None], requires_safety_checker=False,
            safety_checker=[None, None], scheduler=["diffusers", "DDIMScheduler"], text_encoder=["transformers", "CLIPTextModel"],
            tokenizer=["transformers", "CLIPTokenizer"], vae=["diffusers", "AutoencoderKL"],
        )
    elif layout == "if":
        index.update(
            _class_name="IFPipeline", feature_extractor=[None, None], requires_safety_checker=False, safety_checker=[None, None],
            watermarker=[None, None], scheduler=["diffusers", "DDPMScheduler"], text_encoder=["transformers", "T5EncoderModel"],
            tokenizer=["transformers", "T5TokenizerFast"],
        )
    else:
        index.update(
            _class_name="DreamperpPixelPipeline", scheduler=["diffusers", "DDPMScheduler"], text_encoder=["transformers", "CLIPTextModel"],
            tokenizer=["transformers", "CLIPTokenizer"],
        )
    _write_json(out / "model_index.json", index)
    marker: Dict[str, object] = {"format_version": TINY_FORMAT_VERSION, "seed": seed}
    if layout != "sd":
        marker["layout"] = layout  # absent for sd: its files stay byte-identical to earlier versions
    _write_json(out / MARKER_FILE, marker)
    return out


def is_tiny_model_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a model written by :func:`build_tiny_pipeline`."""
    return (Path(path) / MARKER_FILE).is_file()


def cache_root() -> Path:
    """dreamperp's folder in the user cache, ``$XDG_CACHE_HOME/dreamperp`` (``~/.cache/dreamperp``)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "dreamperp"


def tiny_model_path(seed: int = 0, layout: str = "sd") -> Path:
    """The cached tiny model of ``layout`` for ``seed``, built on first use (``$XDG_CACHE_HOME/dreamperp/``).

    Built in a temp folder next to its final place and renamed, so a crash never leaves a half
    model behind and concurrent builders are safe (the first rename wins, the others discard).
    """
    root = cache_root()
    final = root / f"tiny-{layout}-v{TINY_FORMAT_VERSION}-seed{seed}"
    if (final / "model_index.json").is_file() and is_tiny_model_dir(final):
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create the model cache folder '{root}': {err.strerror} (set XDG_CACHE_HOME to a writable folder)") from None
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=root))
    try:
        build_tiny_pipeline(tmp, seed, layout)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished first (final exists and is non-empty): use theirs.
            if not is_tiny_model_dir(final):
                raise UsageError(f"'{final}' exists but is not a complete tiny model: delete it and run again") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
