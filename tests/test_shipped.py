"""What ships inside the package: the configs, found by name from any folder (`dreamperp train toy`),
the toy world's trained models, `dreamperp configs` and `dreamperp --version`. The wheel itself is
built and installed in tests/test_wheel.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import dreamperp
from dreamperp.cli import main
from dreamperp.config import load_config
from dreamperp.errors import UsageError
from dreamperp.shipped import configs_folder, find_config, shipped_config, shipped_configs, summary
from dreamperp.toy.assets import assets_root, toy_asset_path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(dreamperp.__file__).resolve().parent


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_shipped_configs_are_the_package_folder() -> None:
    assert configs_folder() == PACKAGE / "configs"
    names = set(shipped_configs())
    assert names == {p.stem for p in (PACKAGE / "configs").glob("*.yaml")}
    assert {"default", "toy", "tiny", "toy-sega"} <= names
    for name, path in shipped_configs().items():
        assert path.name == f"{name}.yaml" and summary(path), f"{path} needs a first comment line saying what it is for"


@pytest.mark.parametrize("arg", ["toy", "toy.yaml", "configs/toy.yaml", "toy.yml"])
def test_a_name_finds_the_shipped_config_from_any_folder(arg: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_config(arg) == PACKAGE / "configs" / "toy.yaml"
    assert load_config(arg).prompt == "a blue robot"


def test_a_file_of_the_users_comes_before_a_shipped_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "toy.yaml").write_text('prompt: "a green cat"\n', encoding="utf-8")
    assert find_config("configs/toy.yaml") == Path("configs/toy.yaml")
    assert load_config("configs/toy.yaml").prompt == "a green cat"
    assert load_config("toy").prompt == "a blue robot"  # no ./toy file: the shipped one


@pytest.mark.parametrize("arg", ["elsewhere/toy.yaml", "/nonexistent/configs/toy.yaml", "nosuch", "configs/nosuch.yaml"])
def test_other_paths_are_never_taken_for_a_shipped_config(arg: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert shipped_config(arg) is None
    with pytest.raises(UsageError, match=r"does not exist; shipped configs: default, .*toy"):
        load_config(arg)


def test_shipped_base_resolves_inside_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config("toy-sega")  # base: toy.yaml, next to it in the package
    assert (cfg.prompt, cfg.name, cfg.guidance.model, cfg.trainer.max_steps) == ("a red bird", "toy-sega", "toy", 600)
    assert [c.prompt for c in cfg.guidance.sega.concepts] == ["a blue bird", "a red bird"]


def test_a_users_file_can_extend_a_shipped_config_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "sub" / "mine.yaml"
    mine.parent.mkdir()
    mine.write_text('base: toy\nprompt: "a green cat"\ntrainer: {max_steps: 800}\n', encoding="utf-8")
    cfg = load_config(mine)
    assert (cfg.prompt, cfg.trainer.max_steps, cfg.data.width, cfg.guidance.model) == ("a green cat", 800, 32, "toy")
    # A file next to it of that name wins over the shipped one.
    (mine.parent / "toy").write_text('prompt: "a red bird"\nseed: 7\n', encoding="utf-8")
    cfg = load_config(mine)
    assert (cfg.prompt, cfg.seed, cfg.data.width) == ("a green cat", 7, 64)


def test_cli_takes_names_before_a_command_makes_them_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """`dreamperp batch` makes its config argument absolute ('<cwd>/toy'); the CLI resolves the
    name first, so the error below is about the key, not a missing file."""
    monkeypatch.chdir(tmp_path)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red bird\n", encoding="utf-8")
    assert main(["batch", "toy", str(prompts), "trainer.max_steps=-1", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "trainer.max_steps" in err and "does not exist" not in err, err
    assert main(["train", "configs/toy.yaml", "trainer.max_steps=-1", f"output_dir={tmp_path / 'o'}"]) == 2
    assert "trainer.max_steps" in capsys.readouterr().err
    assert main(["train", "nosuch"]) == 2
    assert "shipped configs: default" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "o").exists()


def test_configs_command_lists_every_shipped_config(capsys: pytest.CaptureFixture) -> None:
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    for name, path in shipped_configs().items():
        assert f"{name}  " in out and summary(path) in out
    assert str(configs_folder()) in out


def test_version_is_the_packages_and_the_metadata_reads_it() -> None:
    done = subprocess.run([sys.executable, "-m", "dreamperp", "--version"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"dreamperp {dreamperp.__version__}"
    project = pyproject()
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dreamperp.__version__"}
    assert project["project"]["license"] == "Apache-2.0"  # an SPDX expression, not the deprecated table


def test_toy_models_are_package_data_within_budget() -> None:
    assert assets_root() == PACKAGE / "toy" / "weights"
    total = 0
    for name in ("toy-prior", "toy-classifier"):
        folder = toy_asset_path(name)
        total += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert (toy_asset_path("toy-prior") / "model_index.json").is_file()
    assert (toy_asset_path("toy-classifier") / "model.safetensors").is_file()
    assert total <= 15 * 2**20, f"the toy models are {total / 2**20:.1f} MiB; the wheel's budget is 15 MiB"
    package_data = pyproject()["tool"]["setuptools"]["package-data"]["dreamperp"]
    assert "configs/*.yaml" in package_data and "toy/weights/**/*" in package_data


def test_benchmark_results_are_not_shipped() -> None:
    assert not list((ROOT / "assets").glob("bench-*")), "benchmark outputs belong in benchmarks/"
    assert not list(PACKAGE.rglob("bench-*"))
    assert (ROOT / "benchmarks" / "janus" / "janus.json").is_file()
