"""User mistakes found by the CLI audit: each gives exit code 2 (1 for out of memory), one line on
stderr naming the file/key/flag and the fix, no traceback, and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_export import make_run

from dreamperp.cli import main

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"))


# ------------------------------------------------------------------------------------ config files
@pytest.mark.parametrize(
    "text, expected",
    [
        ("prompt: x\n\tseed: 1\n", r"not valid YAML: .*'\\t'.* at line 2, column 1"),  # a tab for indentation
        ("prompt: x\nprompt: y\n", r"not valid YAML: found duplicate key prompt at line 2"),
        ("prompt: x\n  seed: 1\n", r"not valid YAML: mapping values are not allowed here at line 2"),
        ("42\n", r"must hold a mapping of keys \(key: value lines\), not the single value 42"),
        ("just some text\n", r"must hold a mapping .* not the single value 'just some text'"),
        ("- a\n- b\n", r"must hold a mapping .* not a list"),
    ],
)
def test_bad_yaml_file_is_one_line_naming_file_and_place(tmp_path: Path, capsys, text: str, expected: str) -> None:
    import re

    cfg = tmp_path / "my.yaml"
    cfg.write_text(text)
    out = tmp_path / "out"
    assert main(["train", str(cfg), f"output_dir={out}"]) == 2
    err = one_line_error(capsys)
    assert str(cfg) in err and re.search(expected, err), err
    assert not out.exists()


@pytest.mark.parametrize(
    "text, key, expected",
    [
        ("prompt: x\ntrainer: 5\n", "'trainer'", "is a section and needs indented key: value lines below it"),
        ("prompt: x\ntrainer:\n", "'trainer'", "is an empty section"),
        ("prompt: x\nguidance:\n  sega: [1]\n", "'guidance.sega'", "is a section"),
        ("prompt: x\ndata:\n  elevation_range: [a, 5]\n", "'data.elevation_range.0'", "expected float"),
    ],
)
def test_wrong_shape_in_yaml_names_the_key(tmp_path: Path, capsys, text: str, key: str, expected: str) -> None:
    cfg = tmp_path / "my.yaml"
    cfg.write_text(text)
    assert main(["train", str(cfg), f"output_dir={tmp_path / 'out'}"]) == 2
    err = one_line_error(capsys)
    assert key in err and expected in err and "'?'" not in err
    assert not (tmp_path / "out").exists()


def test_folder_as_config_says_folder(tmp_path: Path, capsys) -> None:
    assert main(["train", str(ROOT / "dreamperp" / "configs")]) == 2
    assert "is a folder" in one_line_error(capsys)


def test_unparsable_override_value_is_a_usage_error(tmp_path: Path, capsys) -> None:
    assert main(["train", str(ROOT / "dreamperp" / "configs" / "tiny.yaml"), "prompt=[a", f"output_dir={tmp_path / 'out'}"]) == 2
    err = one_line_error(capsys)
    assert "override 'prompt=[a'" in err and "quote it" in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------- argparse
@pytest.mark.parametrize(
    "argv, expected",
    [
        (["export", "RUN", "--format", "stl"], "dreamperp export: error: argument --format: invalid choice: 'stl'"),
        (["export", "RUN", "--resolution", "abc"], "argument --resolution: invalid int value: 'abc'"),
        (["render", "RUN", "--turntable", "2"], "the following arguments are required: --out"),
        (["tiny-model", "P", "--seed", "x"], "dreamperp tiny-model: error: argument --seed"),
    ],
)
def test_argparse_errors_are_one_line_exit_2(capsys, argv: list, expected: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = one_line_error(capsys)
    assert err.startswith(f"dreamperp {argv[0]}: error: ") and expected in err and "--help" in err and "usage:" not in err


def test_overrides_after_an_option_are_still_overrides(tmp_path: Path, capsys) -> None:
    # argparse alone rejects `sample CONFIG --out DIR key=value` as "unrecognized arguments".
    out = tmp_path / "samples"
    assert main(["sample", str(ROOT / "dreamperp" / "configs" / "sample.yaml"), "--out", str(out), "guidance.model=tiny", "sample.steps=0"]) == 2
    assert "config key 'sample.steps': must be >= 1" in one_line_error(capsys)
    assert not out.exists()


def test_unknown_option_among_overrides_is_one_line(capsys) -> None:
    assert main(["sample", str(ROOT / "dreamperp" / "configs" / "sample.yaml"), "--out", "x", "--bogus", "steps=1"]) == 2
    assert "unrecognized arguments: --bogus" in one_line_error(capsys)
    assert main(["export", "RUN", "extra"]) == 2
    assert "dreamperp export: error: unrecognized arguments: extra" in one_line_error(capsys)


# ---------------------------------------------------------------------------------- out of memory
@pytest.mark.parametrize(
    "error, amount",
    [
        (MemoryError("Unable to allocate 37.3 GiB for an array with shape (100000, 100000, 1)"), "37.3 GiB"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 40000000000 bytes."), "40000000000 bytes"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "20.00 GiB"),
    ],
)
def test_out_of_memory_is_one_line_exit_1(monkeypatch, capsys, error: BaseException, amount: str) -> None:
    import dreamperp.commands.export

    def fail(args):
        raise error

    monkeypatch.setattr(dreamperp.commands.export, "export_command", fail)
    assert main(["export", "RUN", "--resolution", "100000"]) == 1
    err = one_line_error(capsys)
    assert err.startswith("dreamperp export: error: out of memory") and amount in err and "--resolution" in err


def test_other_runtime_errors_are_not_hidden(monkeypatch) -> None:
    import dreamperp.commands.export

    def fail(args):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(dreamperp.commands.export, "export_command", fail)
    with pytest.raises(RuntimeError, match="a real bug"):
        main(["export", "RUN"])


# ----------------------------------------------------------------------------- files in the way
def test_run_dir_that_is_a_file(tmp_path: Path, capsys) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("x")
    assert main(["train", "--resume", str(f)]) == 2
    assert "is a file, not a run folder" in one_line_error(capsys)
    assert main(["export", str(f)]) == 2
    assert "is a file, not a run folder" in one_line_error(capsys)


def test_tiny_model_under_a_file(tmp_path: Path, capsys) -> None:
    f = tmp_path / "afile"
    f.write_text("keep me")
    assert main(["tiny-model", str(f / "sub")]) == 2
    err = one_line_error(capsys)
    assert "cannot create the folder" in err and "choose another PATH" in err
    assert f.read_text() == "keep me"


def test_render_out_under_a_file(run_dir: Path, tmp_path: Path, capsys) -> None:
    f = tmp_path / "afile"
    f.write_text("keep me")
    assert main(["render", str(run_dir), "--turntable", "1", "--size", "8", "--out", str(f / "sub")]) == 2
    assert "cannot create the --out folder" in one_line_error(capsys)
    assert f.read_text() == "keep me"


def test_export_folder_that_is_a_file(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "runs")
    (run / "export").rmdir()
    (run / "export").write_text("keep me")
    assert main(["export", str(run), "--resolution", "16"]) == 2
    assert "output folder" in one_line_error(capsys)
    assert (run / "export").read_text() == "keep me"


# ------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_of_another_run_does_not_fit(run_dir: Path, tmp_path: Path, capsys) -> None:
    other = make_run(tmp_path / "other", "scene.levels=2", "scene.hidden_dim=8")
    (ckpt,) = sorted((other / "ckpts").glob("step-*.pt"))
    for command in (["export", str(run_dir), "--resolution", "16"], ["video", str(run_dir), "--frames", "1", "--size", "8"]):
        assert main([*command, "--checkpoint", str(ckpt)]) == 2
        err = one_line_error(capsys)
        assert str(ckpt) in err and "does not fit run" in err and "scene.*" in err
    assert not any((run_dir / "export").iterdir())


def test_checkpoint_folder_and_truncated_checkpoint(run_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", str(run_dir), "--checkpoint", str(run_dir / "ckpts")]) == 2
    assert "is a folder: pass a .pt file" in one_line_error(capsys)
    (ckpt,) = sorted((run_dir / "ckpts").glob("step-*.pt"))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ckpt.read_bytes()[:1000])
    assert main(["export", str(run_dir), "--checkpoint", str(cut)]) == 2
    err = one_line_error(capsys)
    assert "truncated or corrupt" in err and err.rstrip().endswith(")") and "If yo" not in err


def test_video_size_beyond_encoders_is_one_line(run_dir: Path, capsys) -> None:
    assert main(["video", str(run_dir), "--frames", "1", "--size", "100000"]) == 2
    assert "larger than 8192" in one_line_error(capsys)
    assert not any((run_dir / "export").iterdir())


def test_repeated_video_mode_and_negative_tiny_seed(run_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["video", str(run_dir), "--frames", "1", "--size", "8", "--modes", "rgb,rgb"]) == 2
    assert "each mode at most once" in one_line_error(capsys)
    assert main(["tiny-model", str(tmp_path / "m"), "--seed", "-1"]) == 2
    assert "--seed must be >= 0" in one_line_error(capsys)
    assert not (tmp_path / "m").exists()
