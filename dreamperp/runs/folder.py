"""Run folders and their metrics log (docs/design.md §8).

A run lives in ``output_dir/<name>/<YYYYmmdd-HHMMSS>-<prompt-slug>/``::

    config.yaml      the resolved config (every key, defaults filled in)
    ckpts/           step-000100.pt, ... (see :mod:`dreamperp.runs.checkpoint`)
    val/             step-000100.png validation grids
    export/          meshes and videos
    metrics.jsonl    one JSON object per logged step

An existing folder is never reused for a new run: a ``-2``, ``-3``, ... suffix is added instead.
Nothing here touches the disk before the caller asks for it, so a config error leaves no trace.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from dreamperp.config import Config, load_config, to_yaml
from dreamperp.errors import UsageError
from dreamperp.files import atomic_write_text, pid_lock

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.jsonl"
LOCK_NAME = ".lock"


def slugify(text: str, max_len: int = 48) -> str:
    """``"A DSLR photo of a corgi!"`` → ``"a-dslr-photo-of-a-corgi"`` (ASCII, at most ``max_len`` chars)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    slug = slug[:max_len].rstrip("-")
    return slug or "run"


class RunDir:
    """Paths of one run folder. :meth:`create` makes a new one, :meth:`open` an existing one."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # ---------------------------------------------------------------------------------- paths
    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def ckpt_dir(self) -> Path:
        return self.root / "ckpts"

    @property
    def val_dir(self) -> Path:
        return self.root / "val"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def metrics_path(self) -> Path:
        return self.root / METRICS_NAME

    def __fspath__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # ------------------------------------------------------------------------------- creation
    @staticmethod
    def folder_name(cfg: Config, now: Optional[float] = None) -> str:
        """``<YYYYmmdd-HHMMSS>-<slug>``; the slug is the prompt's, or the dataset's for multiview."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
        if cfg.data.type == "multiview" and not cfg.prompt.strip():
            source = Path(cfg.data.path.rstrip("/\\") or "multiview")
            label = source.parent.name if source.suffix == ".json" else source.name
            return f"{stamp}-{slugify(label or 'multiview')}"
        return f"{stamp}-{slugify(cfg.prompt)}"

    @classmethod
    def create(cls, cfg: Config, now: Optional[float] = None) -> "RunDir":
        """Make ``output_dir/name/<stamp>-<slug>/`` (with a suffix if taken) with its sub-folders and
        ``config.yaml``. ``os.mkdir`` is exclusive, so two runs started in the same second never share."""
        group = Path(cfg.output_dir).expanduser() / cfg.name
        try:
            group.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"cannot create the output folder '{group}': {err.strerror} (set output_dir to a writable folder)") from None
        base = cls.folder_name(cfg, now)
        for i in range(1, 10_000):
            root = group / (base if i == 1 else f"{base}-{i}")
            try:
                root.mkdir()
            except FileExistsError:
                continue
            except OSError as err:
                raise UsageError(f"cannot create the run folder '{root}': {err.strerror}") from None
            break
        else:  # pragma: no cover - ten thousand runs in one second
            raise UsageError(f"too many runs named '{base}' in '{group}'")
        run = cls(root)
        for sub in (run.ckpt_dir, run.val_dir, run.export_dir):
            sub.mkdir()
        run.write_config(cfg)
        return run

    def write_config(self, cfg: Config) -> None:
        """(Re)write the resolved ``config.yaml`` atomically."""
        atomic_write_text(self.config_path, to_yaml(cfg))

    @classmethod
    def open(cls, path: str | os.PathLike) -> "RunDir":
        """An existing run folder; UsageError if ``path`` is not one."""
        root = Path(path).expanduser()
        if root.exists() and not root.is_dir():
            raise UsageError(f"'{root}' is a file, not a run folder (pass the folder 'dreamperp train' printed, e.g. outputs/default/<timestamp>-<prompt>)")
        if not root.is_dir():
            raise UsageError(f"run folder '{root}' does not exist (pass the folder 'dreamperp train' printed, e.g. outputs/default/<timestamp>-<prompt>)")
        if not (root / CONFIG_NAME).is_file():
            raise UsageError(f"'{root}' is not a dreamperp run folder: it has no {CONFIG_NAME} (pass the folder 'dreamperp train' printed)")
        return cls(root)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the run while training it, so two processes never write the
        same checkpoints. The OS drops the lock when the process dies, even by ``kill -9``."""
        def busy(owner: str) -> str:
            return f"run '{self.root}' is being trained by another process (pid {owner}); wait for it or stop it first"

        with pid_lock(self.root / LOCK_NAME, busy):
            yield

    def load_config(self, overrides: tuple[str, ...] | list[str] = ()) -> Config:
        """The run's resolved config (plus ``overrides``), validated."""
        return load_config(self.config_path, list(overrides), require_prompt=False)


# -------------------------------------------------------------------------------------- metrics
def _jsonable(value: Any) -> Any:
    """Plain JSON values; tensors/arrays become numbers or lists, non-finite floats become strings."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep the file strictly valid
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


class MetricsLogger:
    """Appends one JSON object per call to ``metrics.jsonl``; mirrors scalars to TensorBoard when
    ``tensorboard`` is True and ``torch.utils.tensorboard`` imports."""

    def __init__(self, path: Path, tensorboard: bool = False, tb_dir: Optional[Path] = None):
        self.path = Path(path)
        self._file = open(self.path, "a", encoding="utf-8")
        self.writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # tensorboard not installed (ImportError) or broken
                SummaryWriter = None  # type: ignore[assignment]
            if SummaryWriter is not None:
                self.writer = SummaryWriter(log_dir=str(tb_dir or self.path.parent / "tensorboard"))

    def log(self, record: Dict[str, Any]) -> None:
        """Write ``record`` (must hold ``step``) as one line, flushed so a crash loses nothing logged."""
        record = {k: _jsonable(v) for k, v in record.items()}
        self._file.write(json.dumps(record, sort_keys=False) + "\n")
        self._file.flush()
        if self.writer is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records with ``step > step`` (written after the checkpoint a resumed run starts from),
    and a torn last line, so a resumed run's metrics.jsonl reads as one uninterrupted run."""
    path = Path(path)
    if not path.is_file():
        return
    keep = []
    changed = False
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
            if int(rec.get("step", -1)) > step:
                changed = True
                continue
        except (ValueError, TypeError, AttributeError):
            changed = True  # a line cut short by a kill
            continue
        keep.append(line)
    if changed:
        atomic_write_text(path, "".join(line + "\n" for line in keep))


def read_metrics(path: Path, *, while_written: bool = False) -> list[Dict[str, Any]]:
    """All records of a metrics.jsonl file. ``while_written``: the file may be missing or being
    appended to by a training in another process, so a missing file is no records and a line that
    is not a whole record (a torn last line) is skipped."""
    if not while_written:
        return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "step" in rec:
            records.append(rec)
    return records
