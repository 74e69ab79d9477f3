"""SIGINT/SIGTERM as stop requests: recorded, handlers restored, a second Ctrl-C aborts training."""

from __future__ import annotations

import os
import signal

import pytest

from dreamperp.batch import BatchStop
from dreamperp.signals import StopSignals
from dreamperp.train.loop import StopRequest


def test_signals_are_recorded_and_handlers_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert stop.signum is None and stop.name == ""
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
    assert stop.signum == signal.SIGTERM and stop.name == "SIGTERM" and stop.count == 2
    assert signal.getsignal(signal.SIGTERM) is before


def test_second_ctrl_c_aborts_training_but_not_the_batch_driver(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(KeyboardInterrupt):
        with StopRequest():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
    with BatchStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
    assert stop.count == 2 and stop.name == "SIGINT"
    assert capsys.readouterr().err.count("SIGINT: stopping") == 1
