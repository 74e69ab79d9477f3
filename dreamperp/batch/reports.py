"""What a batch reports: progress lines, summary.csv and contact-sheet.png (docs/design.md §8)."""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from dreamperp.batch.jobs import Job
from dreamperp.config import VIEW_NAMES
from dreamperp.files import atomic_write_bytes, atomic_write_text
from dreamperp.images import png_bytes


def say(message: str) -> None:
    print(f"dreamperp batch: {message}", file=sys.stderr, flush=True)


class Progress:
    """Start/finish lines with elapsed time and the running count."""

    def __init__(self, total: int):
        self.total, self.done, self.failed, self.interrupted = total, 0, 0, 0
        self.t0 = time.monotonic()

    def _clock(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"[{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}]"

    def count(self) -> str:
        stopped = f", {self.interrupted} interrupted" if self.interrupted else ""
        return f"{self.done}/{self.total} done, {self.failed} failed{stopped}"

    def started(self, job: Job, attempt: int, where: str = "") -> None:
        again = f", attempt {attempt}" if attempt > 1 else ""
        say(f"{self._clock()} started {job.name}{again}{where}; {self.count()}")

    def finished(self, job: Job, rec: Dict[str, Any]) -> None:
        if rec["status"] == "finished":
            self.done += 1
            say(f"{self._clock()} finished {job.name} in {rec['seconds']:.1f} s; {self.count()}")
        else:
            self.failed += rec["status"] == "failed"
            self.interrupted += rec["status"] == "interrupted"
            say(
                f"{self._clock()} {rec['status']} {job.name} after {rec['seconds']:.1f} s: {rec['error']}; {self.count()}"
            )


SUMMARY_FIELDS = (
    "job",
    "prompt",
    "seed",
    "status",
    "attempts",
    "seconds",
    "step",
    "loss",
    "mesh",
    "video",
    "run_dir",
    "error",
)


def write_csv(
    path: Path, rows: Sequence[Dict[str, Any]], fields: Optional[Sequence[str]] = None, lineterminator: str = "\r\n"
) -> Path:
    """``rows`` as a CSV table, written atomically: the columns ``fields`` (other keys left out), or
    else every key of the rows whose values are not lists or dicts, in the order first seen."""
    if fields is None:
        fields = list(dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, (list, dict))))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator=lineterminator)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def write_summary(path: Path, records: Sequence[Optional[Dict[str, Any]]]) -> None:
    """summary.csv: one row per job (missing records: pending)."""
    rows = []
    for rec in records:
        if rec is None:
            continue
        m = rec.get("final_metrics") or {}
        rows.append({**rec, "step": m.get("step"), "loss": m.get("loss")})
    write_csv(path, rows, SUMMARY_FIELDS)


def write_contact_sheet(path: Path, jobs: Sequence[Job], records: Dict[str, Dict[str, Any]], tile: int = 0) -> Path:
    """contact-sheet.png: a header of view names, then one row per job: its label, then the four views
    of its newest checkpoint (the final state of a finished run, as its validation grid's rgb row:
    :func:`dreamperp.train.validation.run_views`), grey tiles when there is none."""
    from PIL import Image, ImageDraw

    from dreamperp.train.validation import run_views

    if not tile:
        tile = max(64, min(192, max((j.val_size for j in jobs), default=64)))
    label_w, header, gap = 240, 16, 2
    n = len(VIEW_NAMES)
    width = label_w + n * tile + (n - 1) * gap
    height = header + len(jobs) * (tile + gap)
    sheet = Image.new("RGB", (width, height), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(VIEW_NAMES):
        draw.text((label_w + c * (tile + gap) + 2, 2), name, fill=(230, 230, 230))
    for r, job in enumerate(jobs):
        y = header + r * (tile + gap)
        rec = records.get(job.name) or {}
        views = run_views(job.run_dir, job.val_size)
        if views is not None:
            for c in range(n):
                sheet.paste(
                    Image.fromarray(views[c]).resize((tile, tile), Image.NEAREST), (label_w + c * (tile + gap), y)
                )
        else:
            for c in range(n):
                x = label_w + c * (tile + gap)
                draw.rectangle((x, y, x + tile - 1, y + tile - 1), fill=(70, 70, 70))
        status = rec.get("status", "pending")
        text = [job.prompt[i : i + 38] for i in range(0, min(len(job.prompt), 114), 38)]
        text += [f"seed {job.seed}  {status}"]
        step = (rec.get("final_metrics") or {}).get("step")
        if step is not None:
            text[-1] += f"  step {step}"
        colour = (230, 230, 230) if status == "finished" else (255, 140, 120)
        for i, line in enumerate(text):
            draw.text((4, y + 2 + 12 * i), line, fill=colour)
    return atomic_write_bytes(path, png_bytes(np.asarray(sheet)))
