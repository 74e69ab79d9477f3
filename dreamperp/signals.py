"""SIGINT/SIGTERM as a request to stop cleanly, shared by the training loop and the batch driver."""

from __future__ import annotations

import signal
import threading
from typing import Any, Dict, Optional


class StopSignals:
    """While the ``with`` block runs, SIGINT and SIGTERM are recorded instead of killing the process.

    ``signum`` is the first signal caught (None until then) and ``count`` how many arrived.
    Subclasses react in :meth:`on_signal`. Handlers can only be installed from the main thread;
    elsewhere the object is inert.
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.count = 0
        self._previous: Dict[int, Any] = {}

    def on_signal(self, signum: int, first: bool) -> None:
        """Called for every signal caught; ``first`` for the one that set ``signum``."""

    def _handler(self, signum: int, frame: Any) -> None:
        self.count += 1
        first = self.signum is None
        if first:
            self.signum = signum
        self.on_signal(signum, first)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        """``"SIGINT"``/``"SIGTERM"`` of the first signal, or ``""``."""
        return signal.Signals(self.signum).name if self.signum is not None else ""
