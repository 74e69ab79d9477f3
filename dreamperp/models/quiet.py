"""Quiet loading: the small models dreamperp reads and writes need no per-file progress bars."""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def no_transformers_progress_bars() -> Iterator[None]:
    """Hide transformers' per-file progress bars ("Loading weights", "Writing model shards"):
    for our small, fast loads they only bury the run's own output."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
