"""The 3D Janus benchmark on the toy world (docs/design.md §3, §10).

For every family of the toy world (one colour each), several seeds and each view-conditioning
method, train ``configs/toy.yaml`` with ``dreamperp train`` itself, each run a job of the batch
engine (``dreamperp.batch``, docs/design.md §8: one supervised ``python -m dreamperp train``
process per run; the same code, settings and seeds for every method; only the method's overrides
differ), render a turntable of 36 frames at ``data.eval_elevation`` and classify every frame with
the toy classifier (``research.toy.turntable``). Per run, the metrics of ``research.toy.janus``:

- view consistency: the share of frames whose predicted view is the true view of the azimuth;
- Janus: a back-sector frame (|a| > 135°) seen as "front" with p > 0.5, or the predicted-front
  frames forming more than one contiguous arc of the circle;
- identity: the share of frames classified as the prompted family and colour;
- one face: not Janus, and the predicted-front frames form exactly one arc (a face formed, seen
  only from the front).

Methods (config overrides):

- ``plain``: no view conditioning, the plain prompt for every camera
  (``guidance.view_dependent=false guidance.perp_neg.enabled=false``);
- ``views``: view-dependent prompts only, ", front/side/back view" by azimuth, no negatives
  (``guidance.view_dependent=true guidance.perp_neg.enabled=false``);
- ``perpneg-ts``: Perp-Neg, threestudio schedule (``guidance.perp_neg.enabled=true guidance.perp_neg.schedule=threestudio``);
- ``perpneg-sdf``: Perp-Neg, stable-dreamfusion schedule (``... schedule=stable-dreamfusion``).

``--sega`` measures semantic guidance in 3D instead: ``configs/toy-sega.yaml`` ("a red bird" with
+ "a blue bird" and - "a red bird") trained with and without its concepts
(``guidance.sega.concepts=[]``) on the same seeds; per condition the share of turntable frames
classified in the edit's colour, in the prompt's colour, and as the prompt's family (identity kept).

Output folder (``--out``, one per setting: ``settings.json`` records the config, model, steps and
overrides, and a call with other ones is refused):

- ``runs/<key>/``: the run folders (``dreamperp train --run-dir``); ``logs/<key>.log``: their output;
  ``jobs/<key>.attempts.jsonl``: the batch engine's record of each start;
- ``results/<key>.json``: one per finished run, its score and per-frame predictions (a run with a
  result is skipped when the benchmark is called again; an interrupted run resumes from its last
  checkpoint);
- ``frames/<key>.png``: the run at 0/45/.../315° (runs of the first of ``--seeds``);
- ``janus.json`` / ``janus.csv`` / ``janus-runs.csv``: the table (JSON also holds every run), the
  per-run rows; ``janus-contact.png``: per family one row per method, frames at 0/45/.../315°
  (``sega.*`` and ``sega-contact.png`` with ``--sega``).

    python tools/bench_janus.py --jobs 2 --out bench-janus        # 3 families x 3 seeds x 4 methods, 2 at once
    python tools/bench_janus.py --quick --out bench-janus-quick   # the robot, seed 1, 4 methods
    python tools/bench_janus.py --sega --out bench-sega           # SEGA with / without, 3 seeds
    python tools/bench_janus.py --families bird --colours bird=yellow --out bench-yellow-bird   # another colour
    python tools/bench_janus.py --model tiny-pixel --steps 5 --families bird --seeds 0 --methods plain --out /tmp/smoke
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dreamperp.batch import Batch, Job, make_job, parse_seeds, write_csv  # noqa: E402
from dreamperp.batch.jobs import JOBS_DIR, RUNS_DIR  # noqa: E402
from dreamperp.errors import DreamperpError, UsageError  # noqa: E402
from dreamperp.files import atomic_write_bytes, atomic_write_text  # noqa: E402
from dreamperp.images import png_bytes, to_uint8  # noqa: E402
from research.toy.janus import is_one_face  # noqa: E402
from research.toy.world import COLOUR_NAMES, FAMILIES  # noqa: E402

#: method → (label, config overrides). Perp-Neg takes precedence over view_dependent in the prior.
METHODS: Dict[str, tuple[str, List[str]]] = {
    "plain": ("no view conditioning", ["guidance.view_dependent=false", "guidance.perp_neg.enabled=false"]),
    "views": ("view-dependent prompts", ["guidance.view_dependent=true", "guidance.perp_neg.enabled=false"]),
    "perpneg-ts": ("Perp-Neg, threestudio", ["guidance.view_dependent=true", "guidance.perp_neg.enabled=true", "guidance.perp_neg.schedule=threestudio"]),
    "perpneg-sdf": (
        "Perp-Neg, stable-dreamfusion",
        ["guidance.view_dependent=true", "guidance.perp_neg.enabled=true", "guidance.perp_neg.schedule=stable-dreamfusion"],
    ),
}
#: SEGA conditions → overrides of configs/toy-sega.yaml.
SEGA_CONDITIONS: Dict[str, tuple[str, List[str]]] = {
    "without": ("without the SEGA concepts", ["guidance.sega.concepts=[]"]),
    "with": ("with the SEGA concepts", []),
}
#: One colour per family, all different, so a colour error is visible in the contact sheet.
FAMILY_COLOURS = {"bird": "red", "cat": "yellow", "robot": "blue"}
SEEDS = (0, 1, 2)
#: --quick: the quick start's prompt and seed (configs/toy.yaml), where the four methods differ.
QUICK = dict(families=("robot",), seeds=(1,))
CONTACT_AZIMUTHS = (0, 45, 90, 135, 180, 225, 270, 315)
CONTACT_SIZE = 64
RESULT_VERSION = 1  # bump when the result files' meaning changes (old ones are then recomputed)


# ------------------------------------------------------------------------------------------ planning
def _split(text: str, known: Sequence[str], flag: str) -> List[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in known]
    if bad or not items:
        raise UsageError(f"{flag}: unknown or empty {bad or text!r}; choose from {', '.join(known)}")
    return items


def parse_colours(text: str) -> Dict[str, str]:
    """``"bird=yellow,cat=red"`` → every family's colour, :data:`FAMILY_COLOURS` for the ones not named."""
    colours = dict(FAMILY_COLOURS)
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        family, _, colour = item.partition("=")
        if family not in FAMILIES or colour not in COLOUR_NAMES:
            raise UsageError(
                f"--colours: expected FAMILY=COLOUR with a family of {', '.join(FAMILIES)} and a colour of {', '.join(COLOUR_NAMES)}, got {item!r}"
            )
        colours[family] = colour
    return colours


def plan(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """The runs to do: dicts with key, group (method or SEGA condition), family, colour, prompt, seed, overrides."""
    runs = []
    if args.sega:
        conds = _split(args.methods or ",".join(SEGA_CONDITIONS), list(SEGA_CONDITIONS), "--methods (with --sega: conditions)")
        for cond in conds:
            for seed in args.seed_list:
                runs.append(dict(key=f"sega-{cond}-s{seed}", group=cond, family=None, colour=None, prompt=None, seed=seed, overrides=SEGA_CONDITIONS[cond][1]))
        return runs
    methods = _split(args.methods or ",".join(METHODS), list(METHODS), "--methods")
    for family in args.family_list:
        colour = args.colour_map[family]
        for method in methods:
            for seed in args.seed_list:
                runs.append(dict(
                    key=f"{method}-{family}-{colour}-s{seed}", group=method, family=family, colour=colour,
                    prompt=f"a {colour} {family}", seed=seed, overrides=METHODS[method][1],
                ))
    return runs


# ------------------------------------------------------------------------------------------ running
def run_folder(out: Path, key: str) -> Path:
    """The run folder of ``key``: ``OUT/runs/<key>`` (``dreamperp train --run-dir``)."""
    return out / RUNS_DIR / key


def train_args(args: argparse.Namespace, run: Dict[str, Any]) -> List[str]:
    """``dreamperp train`` overrides of one run (after the config): the run's, then the benchmark's."""
    items = [] if run["prompt"] is None else [f"prompt={run['prompt']}"]
    items += [
        f"seed={run['seed']}",
        "trainer.video_at_end=false",  # the benchmark renders its own turntable; mesh and video would only cost time
        "trainer.progress=false",
        *run["overrides"],
    ]
    if args.model:
        items.append(f"guidance.model={args.model}")
    if args.steps:
        items.append(f"trainer.max_steps={args.steps}")
    return items + list(args.set or [])


def last_line(path: Path) -> str:
    lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines() if path.is_file() else []
    return lines[-1] if lines else "?"


def plan_jobs(args: argparse.Namespace, runs: List[Dict[str, Any]], out: Path) -> List[Job]:
    """The runs as batch jobs in the benchmark's layout, each config loaded (and so checked) first, as
    ``dreamperp batch`` does: a bad one fails its run before any run starts, with ``dreamperp train``'s
    own message in its log. The jobs import this checkout's ``dreamperp`` (PYTHONPATH)."""
    from dreamperp.config import load_config

    config = str(Path(args.config).resolve())
    path = os.environ.get("PYTHONPATH")
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), *([path] if path else [])])}
    jobs = []
    for run in runs:
        extra, key = train_args(args, run), run["key"]
        log = out / "logs" / f"{key}.log"
        try:
            cfg = load_config(config, extra)
        except DreamperpError as err:
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(f"$ dreamperp train {' '.join([config, *extra])}\ndreamperp train: error: {err}\n")
            raise UsageError(f"run {key} failed (exit {err.exit_code}): {last_line(log)}; full log: {log}") from None
        jobs.append(make_job(
            cfg, index=len(jobs), name=key, config=config, extra=extra, run_dir=run_folder(out, key), log_path=log,
            attempts_path=out / JOBS_DIR / f"{key}.attempts.jsonl", prompt=run["prompt"], env=env,
        ))
    return jobs


class Interrupted(DreamperpError):
    """SIGINT/SIGTERM: the running trainings saved a checkpoint; exit 128 + the signal."""

    def __init__(self, signum: int, name: str):
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {name}; the running trainings saved a checkpoint (call again with the same --out to resume)")


class BenchBatch(Batch):
    """The batch driver with the benchmark's bookkeeping: each finished run is scored by ``score(job,
    train_seconds)`` in a thread of its own while the others train; a failed run or score stops
    queued runs from starting (the running ones finish and are scored, then :meth:`finish` raises)."""

    def __init__(self, jobs: List[Job], out: Path, parallel: int, score: Callable[[Job, float], None]):
        n = os.environ.get("OMP_NUM_THREADS", "")  # threads per training: the caller's, else the engine's cores / jobs
        threads = int(n) if n.isdigit() and int(n) > 0 else None
        engine = argparse.Namespace(parallel=parallel, cpus_per_run=threads, gpus_per_run=0, max_retries=0)
        super().__init__(jobs, out, engine)  # gpus_per_run=0: runs see every GPU, as a plain `dreamperp train`
        self.score = score
        self.scorer = ThreadPoolExecutor(max_workers=1)
        self.scoring: List[Future] = []
        self.failure: Optional[DreamperpError] = None

    def record(self, job: Job, rec: Dict[str, Any]) -> None:
        self.records[job.name] = rec
        if rec["status"] == "finished":
            self.scoring.append(self.scorer.submit(self._score, job, rec["seconds"]))
        elif self.stop.signum is None and self.failure is None:
            self.halt()
            self.failure = UsageError(
                f"run {job.name} failed (exit {rec['exit_code']}): {last_line(Path(job.log_path))}; full log: {job.log_path}"
            )

    def _score(self, job: Job, train_seconds: float) -> None:
        try:
            self.score(job, train_seconds)
        except BaseException:
            self.halt()
            raise

    def finish(self) -> None:
        """Wait for the scores; raise a scoring error, else a failed run, else the interruption."""
        self.scorer.shutdown(wait=True)
        for fut in self.scoring:
            fut.result()
        if self.failure is not None:
            raise self.failure
        if self.stop.signum is not None:
            raise Interrupted(int(self.stop.signum), self.stop.name)


def score_folder(
    folder: Path, classifier: Any, run: Dict[str, Any], frames: int, size: int = 0, strip: bool = True
) -> tuple[Dict[str, Any], Optional[np.ndarray]]:
    """Score a trained run: the result dict and (with ``strip``) its contact strip ``[8, S, S, 3]`` uint8."""
    from dreamperp.export.fidelity import read_fidelity
    from dreamperp.runs.checkpoint import load_run
    from research.toy.janus import parse_toy_prompt
    from research.toy.turntable import azimuth_cameras, render_frames, score_scene

    loaded = load_run(folder, device="cpu")
    scored = score_scene(loaded.scene, loaded.cfg, classifier, frames=frames, size=size or None)
    frames_8 = render_frames(loaded.scene, azimuth_cameras(loaded.cfg, CONTACT_AZIMUTHS, CONTACT_SIZE)).permute(0, 2, 3, 1) if strip else None
    family, colour = parse_toy_prompt(loaded.cfg.prompt)
    preds = {k: v.argmax(-1).tolist() for k, v in scored.probs.items()}
    result = dict(
        version=RESULT_VERSION, key=run["key"], group=run["group"], seed=run["seed"], prompt=loaded.cfg.prompt,
        family=FAMILIES[family], colour=COLOUR_NAMES[colour], steps=loaded.step, model=loaded.cfg.guidance.model,
        run_dir=str(folder), **scored.score.as_dict(),
        colour_counts={c: preds["colour"].count(i) for i, c in enumerate(COLOUR_NAMES)},
        azimuths=[round(a, 3) for a in scored.azimuths.tolist()],
        pred_view=preds["view"], p_front=[round(p, 4) for p in scored.probs["view"][:, 0].tolist()],
        pred_family=preds["family"], pred_colour=preds["colour"],
    )
    result.update(read_fidelity(folder))  # the exported mesh against the scene (docs/design.md §14)
    return result, None if frames_8 is None else to_uint8(frames_8)


def load_result(path: Path) -> Optional[Dict[str, Any]]:
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return res if res.get("version") == RESULT_VERSION else None


# ------------------------------------------------------------------------------------------ tables
def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    n = len(xs)
    m = sum(xs) / n
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0)


def summarise(results: List[Dict[str, Any]], groups: Sequence[str], sega_target: Optional[str] = None) -> List[Dict[str, Any]]:
    """One row per group (method or SEGA condition) over its runs."""
    rows = []
    for g in groups:
        rs = [r for r in results if r["group"] == g]
        if not rs:
            continue
        vc_m, vc_s = _mean_std([r["view_consistency"] for r in rs])
        id_m, id_s = _mean_std([r["identity"] for r in rs])
        janus_runs = sum(bool(r["janus"]) for r in rs)
        row = dict(
            group=g, runs=len(rs), janus_runs=janus_runs, janus_rate=janus_runs / len(rs),
            one_face_runs=sum(is_one_face(bool(r["janus"]), int(r["front_arcs"])) for r in rs),
            view_consistency_mean=vc_m, view_consistency_std=vc_s, identity_mean=id_m, identity_std=id_s,
            family_share_mean=_mean_std([r["family_share"] for r in rs])[0],
            mesh_iou_min=min((r["mesh_iou_min"] for r in rs if r.get("mesh_iou_min") is not None), default=None),
        )
        if sega_target is not None:
            shares = [r["colour_counts"][sega_target] / r["frames"] for r in rs]
            row["target_colour"] = sega_target
            row["target_share_mean"], row["target_share_std"] = _mean_std(shares)
            row["prompt_colour_share_mean"] = _mean_std([r["colour_share"] for r in rs])[0]
        rows.append(row)
    return rows


def format_table(rows: List[Dict[str, Any]], labels: Dict[str, str], sega: bool) -> str:
    out = io.StringIO()
    if sega:
        target = rows[0]["target_colour"] if rows else "?"
        out.write(f"{'condition':<28} {'runs':>4}  {target + ' frames':>16}  {'prompt colour':>13}  {'family kept':>11}\n")
        for r in rows:
            out.write(
                f"{labels[r['group']]:<28} {r['runs']:>4}  {r['target_share_mean']:>9.1%} ± {r['target_share_std']:.2f}  "
                f"{r['prompt_colour_share_mean']:>13.1%}  {r['family_share_mean']:>11.1%}\n"
            )
    else:
        out.write(f"{'method':<30} {'runs':>4}  {'Janus rate':>12}  {'one face':>8}  {'view consistency':>16}  {'identity':>8}  {'mesh IoU':>8}\n")
        for r in rows:
            jr = f"{r['janus_runs']}/{r['runs']} {r['janus_rate']:.0%}"
            of = f"{r['one_face_runs']}/{r['runs']}"
            out.write(
                f"{labels[r['group']]:<30} {r['runs']:>4}  {jr:>12}  {of:>8}  {r['view_consistency_mean']:>9.2f} ± {r['view_consistency_std']:.2f}  "
                f"{r['identity_mean']:>8.1%}  {'-' if r['mesh_iou_min'] is None else format(r['mesh_iou_min'], '.3f'):>8}\n"
            )
    return out.getvalue()


def contact_sheet(blocks: List[tuple[str, List[tuple[str, np.ndarray]]]], gap: int = 2) -> np.ndarray:
    """Blocks (title, rows of (label, strip ``[8, S, S, 3]``)) → one image: a column header of azimuths,
    each block under its title, one labelled row per strip."""
    from PIL import Image, ImageDraw

    s = next(strip for _, rows in blocks for _, strip in rows).shape[1]
    n = len(CONTACT_AZIMUTHS)
    left = 10 + 7 * max(len(label) for _, rows in blocks for label, _ in rows)
    title_h, header = 14, 14
    height = header + sum(title_h + len(rows) * (s + gap) for _, rows in blocks)
    width = left + n * (s + gap)
    img = Image.new("RGB", (width, height), (40, 40, 40))
    draw = ImageDraw.Draw(img)
    for j, a in enumerate(CONTACT_AZIMUTHS):
        draw.text((left + j * (s + gap) + 2, 1), f"{a}", fill=(230, 230, 230))
    y = header
    for title, rows in blocks:
        draw.text((2, y + 1), title, fill=(255, 220, 120))
        y += title_h
        for label, strip in rows:
            draw.text((2, y + s // 2 - 6), label, fill=(230, 230, 230))
            for j in range(n):
                img.paste(Image.fromarray(strip[j]), (left + j * (s + gap), y))
            y += s + gap
    return np.asarray(img)


def read_strip(path: Path) -> Optional[np.ndarray]:
    """A saved contact strip (8 frames side by side) → ``[8, S, S, 3]``, or None."""
    from PIL import Image

    if not path.is_file():
        return None
    row = np.asarray(Image.open(path).convert("RGB"))
    s = row.shape[0]
    return row.reshape(s, len(CONTACT_AZIMUTHS), s, 3).transpose(1, 0, 2, 3)


def sega_target_colour(config: Path) -> str:
    """The colour the SEGA config steers towards: the colour named by its first non-reverse concept."""
    from dreamperp.config import load_config

    cfg = load_config(config)
    for c in cfg.guidance.sega.concepts:
        words = re.findall(r"[a-z]+", c.prompt.lower())
        cols = [w for w in words if w in COLOUR_NAMES]
        if not c.reverse and cols:
            return cols[0]
    raise UsageError(f"--sega: config '{config}' has no SEGA concept (not reverse) that names a toy colour ({', '.join(COLOUR_NAMES)})")


def check_settings(out: Path, args: argparse.Namespace) -> None:
    """Record what every run of ``out`` shares (config, model, steps, overrides, frames, size) in
    ``OUT/settings.json``; a later call with other settings would mix runs, so it is refused."""
    settings = dict(
        sega=bool(args.sega), config=str(Path(args.config).resolve()), model=args.model, steps=args.steps,
        set=list(args.set or []), frames=args.frames, size=args.size, version=RESULT_VERSION,
    )
    path = out / "settings.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            old = None
        if old != settings:
            diff = sorted(k for k in settings if not isinstance(old, dict) or old.get(k) != settings[k])
            raise UsageError(
                f"--out '{out}' holds runs made with other settings ({', '.join(diff)} differ, see {path}): "
                "use another --out, or the same settings to resume"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=1) + "\n")


# ------------------------------------------------------------------------------------------ main
def bench(args: argparse.Namespace) -> Dict[str, Any]:
    from dreamperp.toy.assets import toy_asset_path
    from research.toy.classifier import ToyClassifier

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' exists and is not a folder")
    config = Path(args.config)
    if not config.is_file():
        raise UsageError(f"--config '{config}' does not exist")
    target = sega_target_colour(config) if args.sega else None
    runs = plan(args)
    classifier = ToyClassifier.load(args.classifier or toy_asset_path("toy-classifier"))
    check_settings(out, args)
    t_all = time.perf_counter()
    done: Dict[str, Dict[str, Any]] = {}
    todo: List[Dict[str, Any]] = []
    for i, run in enumerate(runs, 1):
        res = load_result(out / "results" / f"{run['key']}.json")
        if res is not None:
            print(f"[{i}/{len(runs)}] {run['key']}: done before (skipped)", flush=True)
            done[run["key"]] = res
        else:
            todo.append(run)
    by_key = {run["key"]: run for run in runs}

    def score(job: Job, train_seconds: float) -> None:
        run, t1 = by_key[job.name], time.perf_counter()
        # Contact frames only for the first seed: the sheet shows one seed, and they cost as much as the turntable.
        folder = run_folder(out, run["key"])
        result, strip = score_folder(folder, classifier, run, args.frames, args.size, strip=run["seed"] == args.seed_list[0])
        result.update(train_seconds=round(train_seconds, 1), score_seconds=round(time.perf_counter() - t1, 1))
        if strip is not None:
            atomic_write_bytes(out / "frames" / f"{run['key']}.png", png_bytes(np.concatenate(list(strip), 1)))
        atomic_write_text(out / "results" / f"{run['key']}.json", json.dumps(result, indent=1) + "\n")
        done[run["key"]] = result
        print(
            f"[{len(done)}/{len(runs)}] {run['key']}: view consistency {result['view_consistency']:.2f}, Janus {result['janus']}, "
            f"identity {result['identity']:.0%} (train {result['train_seconds']:.0f} s, score {result['score_seconds']:.0f} s)",
            flush=True,
        )

    if todo:
        # Each training is a job of the batch engine, --jobs at once sharing the cores; this process
        # scores each run as it finishes. SIGINT/SIGTERM: the running ones save a checkpoint and stop.
        jobs = plan_jobs(args, todo, out)
        for folder in (out / "logs", out / JOBS_DIR):
            folder.mkdir(parents=True, exist_ok=True)
        batch = BenchBatch(jobs, out, args.jobs, score)
        batch.run_jobs(jobs)
        batch.finish()
    results = [done[run["key"]] for run in runs]
    groups = list(dict.fromkeys(r["group"] for r in runs))
    labels = {k: v[0] for k, v in (SEGA_CONDITIONS if args.sega else METHODS).items()}
    rows = summarise(results, groups, target)
    stem = "sega" if args.sega else "janus"
    summary = dict(
        benchmark=stem, config=str(config), model=args.model or "(config)", steps=args.steps or "(config)", frames=args.frames,
        seeds=args.seed_list, families=None if args.sega else args.family_list, overrides=list(args.set or []),
        seconds_this_call=round(time.perf_counter() - t_all, 1),
        seconds_of_runs=round(sum(r.get("train_seconds", 0) + r.get("score_seconds", 0) for r in results), 1),
        table=rows, labels=labels, runs=results,
    )
    atomic_write_text(out / f"{stem}.json", json.dumps(summary, indent=1) + "\n")
    write_csv(out / f"{stem}.csv", rows, lineterminator="\n")
    write_csv(out / f"{stem}-runs.csv", results, lineterminator="\n")
    # Contact sheet: per family (SEGA: one block), one row per method / condition, the first seed that has frames.
    blocks = []
    for fam in [None] if args.sega else args.family_list:
        rows_img = []
        for g in groups:
            for seed in args.seed_list:
                key = f"sega-{g}-s{seed}" if args.sega else f"{g}-{fam}-{args.colour_map[fam]}-s{seed}"
                strip = read_strip(out / "frames" / f"{key}.png")
                if strip is not None:
                    rows_img.append((f"{g} s{seed}", strip))
                    break
        if rows_img:
            blocks.append(("SEGA: " + config.stem if args.sega else f"a {args.colour_map[fam]} {fam}", rows_img))
    if blocks:
        atomic_write_bytes(out / f"{stem}-contact.png", png_bytes(contact_sheet(blocks)))
    summary["text"] = format_table(rows, labels, args.sega)
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="config to train (default configs/toy.yaml; with --sega configs/toy-sega.yaml)")
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated subset of {', '.join(FAMILIES)} (one colour each, see --colours)")
    default_colours = ",".join(f"{f}={c}" for f, c in FAMILY_COLOURS.items())
    p.add_argument("--colours", default="", help=f"FAMILY=COLOUR,... the colour a family is trained in (default {default_colours})")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--methods", default="", help=f"comma-separated subset of {', '.join(METHODS)} (with --sega: of {', '.join(SEGA_CONDITIONS)})")
    p.add_argument("--quick", action="store_true", help="the robot, seed 1 (the quick start's), every method (or with --sega: seed 1)")
    p.add_argument("--sega", action="store_true", help="the SEGA benchmark: configs/toy-sega.yaml with and without its concepts")
    p.add_argument("--out", default="bench-janus", help="output folder (resumable: finished runs are skipped)")
    p.add_argument("--model", default="", help="override guidance.model (default: the config's, 'toy'); e.g. tiny-pixel for a smoke test")
    p.add_argument("--steps", type=int, default=0, help="override trainer.max_steps (default: the config's)")
    p.add_argument("--frames", type=int, default=36, help="turntable frames classified per run (default 36)")
    p.add_argument("--size", type=int, default=0, help="turntable frame size in pixels (default: the classifier's input, 32)")
    p.add_argument("--classifier", default=None, help="toy classifier folder (default dreamperp/toy/weights/toy-classifier)")
    p.add_argument("--jobs", type=int, default=1, help="trainings run at once, each with cores / JOBS threads (default 1; 2 on 2 cores: half the wall time)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="extra config override for every run (repeatable)")
    args = p.parse_args(argv)
    try:
        if args.steps < 0 or args.frames < 1 or args.size < 0 or args.jobs < 1:
            raise UsageError("--steps and --size must be >= 0, --frames and --jobs >= 1")
        args.config = args.config or str(ROOT / "dreamperp" / "configs" / ("toy-sega.yaml" if args.sega else "toy.yaml"))
        args.family_list = _split(args.families, FAMILIES, "--families")
        args.colour_map = parse_colours(args.colours)
        args.seed_list = parse_seeds(args.seeds)
        if args.quick:
            args.seed_list = list(QUICK["seeds"])
            args.family_list = list(QUICK["families"])
        summary = bench(args)
    except DreamperpError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code if isinstance(err, Interrupted) else 2
    print()
    print(summary["text"], end="")
    out = Path(args.out)
    stem = summary["benchmark"]
    print(f"wrote {out / (stem + '.json')}, {out / (stem + '.csv')}, {out / (stem + '-runs.csv')}, {out / (stem + '-contact.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
