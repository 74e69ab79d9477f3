"""Per-stage timing for benchmarks. Disabled (the default) it costs one attribute check per stage."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Dict, Iterator, List

import torch


class StageTimer:
    """Accumulates wall time per named stage.

    Enabled, each stage synchronises the device before and after, so GPU work is charged to the
    stage that queued it; the training step itself never synchronises when the timer is off.
    """

    def __init__(self, enabled: bool = False, device: torch.device | str = "cpu"):
        self.enabled = enabled
        self.device = torch.device(device)
        self.times: Dict[str, List[float]] = defaultdict(list)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.times[name].append(time.perf_counter() - start)

    def __call__(self, name: str) -> contextlib.AbstractContextManager:
        """``with timer("render"): ...``"""
        return self._timed(name) if self.enabled else contextlib.nullcontext()

    def reset(self) -> None:
        self.times.clear()
