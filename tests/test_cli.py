"""The command line: every subcommand has help, usage errors exit 2 without a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dreamperp.cli import build_parser, main

SUBCOMMANDS = ["train", "export", "video", "render", "sample", "tiny-model"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dreamperp " + command)
    assert len(out.splitlines()) > 4


def test_top_level_help_lists_every_subcommand():
    text = build_parser().format_help()
    for command in SUBCOMMANDS:
        assert command in text


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_console_entry_point_runs_as_module(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dreamperp", "train", str(tmp_path / "missing.yaml")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "missing.yaml" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("command", ["export", "video"])
def test_run_commands_reject_a_folder_that_is_not_a_run(tmp_path, capsys, command):
    assert main([command, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "Traceback" not in err
