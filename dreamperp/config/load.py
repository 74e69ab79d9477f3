"""Loading a config: schema ⊕ YAML files (``base:`` chains) ⊕ ``key=value`` overrides, validated.

Every problem is a one-line :class:`~dreamperp.errors.ConfigError` naming the key (with a "did you
mean" for a typo) or a :class:`~dreamperp.errors.UsageError` naming the file (docs/design.md §12).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import MISSING as DC_MISSING
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from dreamperp.config.schema import Config, SegaConcept, SegaConfig
from dreamperp.config.validate import validate
from dreamperp.errors import ConfigError, UsageError, first_line
from dreamperp.shipped import find_config, names_hint, shipped_config


def _all_keys(cls: type = Config, prefix: str = "") -> List[str]:
    """Every dotted leaf key of the schema; list items of dataclasses appear as ``key.N.field``."""
    out = []
    for f in fields(cls):
        default = f.default_factory() if f.default_factory is not DC_MISSING else f.default  # type: ignore[misc]
        out.append(f"{prefix}{f.name}")
        if is_dataclass(default):
            out.extend(_all_keys(type(default), f"{prefix}{f.name}."))
    if cls is SegaConfig:
        out.extend(_all_keys(SegaConcept, f"{prefix}concepts.N."))
    return out


def _suggest(full_key: str) -> str:
    """' (did you mean 'x.y'?)' for an unknown dotted key, or ''."""
    generic = ".".join("N" if p.isdigit() else p for p in full_key.split("."))
    keys = _all_keys()
    # Compare the last component among siblings first, then whole keys (catches a wrong section).
    parent = generic.rsplit(".", 1)[0] + "." if "." in generic else ""
    siblings = [k for k in keys if k.startswith(parent) and "." not in k[len(parent) :]]
    match = difflib.get_close_matches(generic, siblings, n=1, cutoff=0.6) or difflib.get_close_matches(
        generic, keys, n=1, cutoff=0.6
    )
    if not match:
        tail = generic.rsplit(".", 1)[-1]
        match = [k for k in keys if k.rsplit(".", 1)[-1] == tail][:1] or [
            k
            for k in keys
            if k.rsplit(".", 1)[-1]
            in difflib.get_close_matches(tail, [x.rsplit(".", 1)[-1] for x in keys], n=1, cutoff=0.75)
        ][:1]
    if not match:
        return ""
    real = match[0]
    indices = [p for p in full_key.split(".") if p.isdigit()]
    for idx in indices:
        real = real.replace(".N.", f".{idx}.", 1)
    return f" (did you mean '{real}'?)"


def _field_type_name(full_key: str) -> str:
    """Human name of the schema type of a dotted key, e.g. 'int', or ''."""
    node: Any = Config
    ftype: Any = None
    for part in full_key.split("."):
        if part.isdigit():
            # An item of a list field: a SegaConcept, or an element of List[float] / List[str].
            inner = re.fullmatch(r"(?:typing\.)?List\[(\w+)\]", str(ftype or ""))
            node, ftype = (
                (SegaConcept, "SegaConcept")
                if inner is None or inner.group(1) == "SegaConcept"
                else (None, inner.group(1))
            )
            continue
        by_name = {f.name: f for f in fields(node)} if is_dataclass(node) else {}
        if part not in by_name:
            return ""
        f = by_name[part]
        default = f.default_factory() if f.default_factory is not DC_MISSING else f.default  # type: ignore[misc]
        node, ftype = (type(default) if is_dataclass(default) else None), f.type
    text = str(ftype or "")
    for short in ("int", "float", "str", "bool"):
        if text == short:
            return short
    return text.replace("typing.", "")


def _wrap_omegaconf_error(err: OmegaConfBaseException, origin: str, key: str = "") -> ConfigError:
    key = re.sub(r"\[(\d+)\]", r".\1", str(getattr(err, "full_key", "") or key or "?"))
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)):
        return ConfigError(key, f"unknown key in {origin}{_suggest(key)}")
    if isinstance(err, ValidationError) and getattr(err, "value", None) is None:
        return ConfigError(key, f"a value is required, got an empty value (null) in {origin}")
    if isinstance(err, ValidationError):
        expected = _field_type_name(key)
        exp = f", expected {expected}" if expected else ""
        return ConfigError(key, f"wrong type for value {getattr(err, 'value', None)!r} in {origin}{exp}")
    return ConfigError(key, f"{first_line(err)} (in {origin})")


def _check_list_indices(merged: Any, key: str) -> None:
    """A numeric key part must address an existing list item (OmegaConf's own error is cryptic)."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not part.isdigit() or i == 0:
            continue
        parent = ".".join(parts[:i])
        node = OmegaConf.select(merged, parent, default=None)
        if isinstance(node, ListConfig) and int(part) >= len(node):
            raise ConfigError(
                key,
                f"'{parent}' has {len(node)} item(s), so index {part} does not exist; set the whole list instead, e.g. {parent}=[...]",
            )


def _apply_overrides(merged: Any, overrides: Sequence[str]) -> Any:
    """Apply ``key=value`` items one by one, so list items can be addressed (``concepts.0.scale=3``)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"override '{item}' is not of the form key=value (e.g. trainer.max_steps=2000)")
        try:
            value = OmegaConf.from_dotlist([f"value={text}"])["value"]  # YAML value grammar, as OmegaConf parses it
        except (OmegaConfBaseException, yaml.YAMLError) as err:
            raise UsageError(
                f"could not parse the value of override '{item}': {_yaml_problem(err)} (quote it, e.g. {key}='\"...\"')"
            ) from None
        _check_list_indices(merged, key)
        try:
            OmegaConf.update(merged, key, value, merge=True)
        except OmegaConfBaseException as err:
            raise _wrap_omegaconf_error(err, "the command-line overrides", key) from None
        except (TypeError, IndexError, KeyError, ValueError):
            raise ConfigError(key, f"cannot set this key to {text!r} (check the key path and list indices)") from None
    return merged


def _yaml_problem(err: BaseException) -> str:
    """One line from a YAML error: the problem and where it is (PyYAML spreads it over four lines)."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{err.problem}{where}"
    return first_line(err)


def _load_yaml_mapping(path: Path) -> DictConfig:
    """A YAML config file as a DictConfig; UsageError naming the file for bad YAML or a non-mapping."""
    try:
        # The plain YAML parse finds the top-level type (OmegaConf.load turns a lone string into a
        # key); OmegaConf.load then reads it with OmegaConf's own rules (e.g. no duplicate keys).
        top = yaml.safe_load(path.read_text(encoding="utf-8"))
        if top is not None and not isinstance(top, dict):
            kind = "a list" if isinstance(top, list) else f"the single value {top!r}"
            raise UsageError(f"config file '{path}' must hold a mapping of keys (key: value lines), not {kind}")
        loaded = OmegaConf.load(path)
    except UsageError:
        raise
    except Exception as err:  # yaml, unicode and OmegaConf errors come in many types
        raise UsageError(f"config file '{path}' is not valid YAML: {_yaml_problem(err)}") from None
    assert isinstance(loaded, DictConfig)
    return loaded


def _check_sections(node: dict, cls: type, origin: str, prefix: str = "") -> None:
    """A section of the schema (``trainer:``, ``guidance.sega:``) must be given a mapping; OmegaConf's
    own merge error for ``trainer: 5`` names no key. ``node``: the file as plain (unresolved) dicts."""
    for f in fields(cls):
        default = f.default_factory() if f.default_factory is not DC_MISSING else f.default  # type: ignore[misc]
        if not is_dataclass(default) or f.name not in node:
            continue
        value = node[f.name]
        if value is None:
            raise ConfigError(
                f"{prefix}{f.name}",
                f"is an empty section in {origin}: give it indented key: value lines below, or delete the line",
            )
        if not isinstance(value, dict):
            raise ConfigError(
                f"{prefix}{f.name}",
                f"is a section and needs indented key: value lines below it in {origin}, not {value!r}",
            )
        _check_sections(value, type(default), origin, f"{prefix}{f.name}.")


#: Top-level key of a config file naming the file it extends (docs/design.md §12): not a Config field.
BASE_KEY = "base"


def config_chain(path: Path) -> List[Tuple[Path, DictConfig]]:
    """``path`` and the files it extends through ``base:``, each read once, the root first (each
    file's keys then override its base's); ``base`` itself is dropped. It names a file relative to
    the folder of the file that names it, or an absolute one (``~`` expanded)."""
    chain: List[Tuple[Path, DictConfig]] = []
    seen: List[Path] = []
    current = path
    while True:
        if current.resolve() in seen:
            names = " -> ".join(f"'{c}'" for c, _ in chain) + f" -> '{current}'"
            raise UsageError(f"config files extend each other in a loop: {names}; remove one 'base:' line")
        seen.append(current.resolve())
        loaded = _load_yaml_mapping(current)
        base = loaded.pop(BASE_KEY, None)
        chain.append((current, loaded))
        if base is None:
            return chain[::-1]
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(
                BASE_KEY,
                f"must be the file name of the config that '{current}' extends, e.g. base: toy.yaml, not {base!r}",
            )
        parent = current.parent / Path(base).expanduser()  # an absolute path replaces the folder
        if not parent.is_file():  # `base: toy` in a file of the user's: the shipped config
            parent = shipped_config(base) or parent
        if not parent.is_file():
            raise UsageError(f"config file '{current}' extends '{parent}' (base: {base}), which does not exist")
        current = parent


def load_config(path: Optional[str | Path], overrides: Sequence[str] = (), *, require_prompt: bool = True) -> Config:
    """Schema ⊕ YAML file ⊕ ``key=value`` overrides, validated. Raises :class:`ConfigError`."""
    merged: Any = OmegaConf.structured(Config)
    if path is not None:
        p = find_config(path)  # a file, or the name of a shipped config
        if p.is_dir():
            raise UsageError(f"config file '{p}' is a folder: pass a YAML file or a shipped config's name ({names_hint()})")
        if not p.is_file():
            raise UsageError(f"config file '{p}' does not exist; shipped configs: {names_hint()} (`dreamperp configs` lists them)")
        for layer, file_cfg in config_chain(p):
            _check_sections(OmegaConf.to_container(file_cfg, resolve=False), Config, f"'{layer}'")  # type: ignore[arg-type]
            try:
                merged = OmegaConf.merge(merged, file_cfg)
            except OmegaConfBaseException as err:
                raise _wrap_omegaconf_error(err, f"'{layer}'") from None
    merged = _apply_overrides(merged, overrides)
    try:
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise _wrap_omegaconf_error(err, "the config") from None
    validate(cfg, require_prompt=require_prompt)
    return cfg


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what is saved in a run folder)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def describe(cls: type = Config, prefix: str = "") -> List[tuple[str, Any, str]]:
    """(dotted key, default, help) for every field; used by ``--help`` style listings and tests."""
    out = []
    for f in fields(cls):
        default = f.default_factory() if f.default_factory is not DC_MISSING else f.default  # type: ignore[misc]
        if is_dataclass(default):
            out.extend(describe(type(default), f"{prefix}{f.name}."))
        else:
            out.append((f"{prefix}{f.name}", default, f.metadata.get("help", "")))
    return out


def flat_dict(cfg: Config) -> dict:
    """``{"trainer.max_steps": 200, ...}``: every leaf of ``cfg`` as plain values under dotted keys."""
    out: dict = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(OmegaConf.structured(cfg)), "")
    return out
