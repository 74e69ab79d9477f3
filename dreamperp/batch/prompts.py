"""Prompt files and seed lists of ``dreamperp batch``: what to train (docs/design.md §8)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from dreamperp.errors import UsageError, first_line


@dataclass
class PromptItem:
    """One entry of a prompt file; ``line`` is 1-based."""

    prompt: str
    overrides: List[str]
    line: int


def as_override(key: str, value: Any) -> str:
    """``key=value`` in the override grammar; JSON is valid YAML flow, so strings, lists and
    mappings survive the trip through ``dreamperp train``'s parser unchanged."""
    return f"{key}={json.dumps(value)}"


def _item_overrides(raw: Any, where: str) -> List[str]:
    if raw is None:
        return []
    if isinstance(raw, dict):
        return [as_override(str(k), v) for k, v in raw.items()]
    if isinstance(raw, list) and all(isinstance(x, str) and "=" in x for x in raw):
        return list(raw)
    raise UsageError(f"{where}: 'overrides' must be a mapping (key: value) or a list of key=value strings, got {raw!r}")


def read_prompts(path: str | os.PathLike) -> List[PromptItem]:
    """A ``.txt`` list (one prompt a line; ``#`` comments and blank lines skipped) or a ``.yaml``/``.yml``
    list of prompts or ``{prompt: ..., overrides: {key: value}}`` mappings. UsageError naming the line."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(
            f"prompt file '{p}' is a folder: pass a .txt or .yaml prompt list (e.g. assets/prompts/gallery.txt)"
        )
    if not p.is_file():
        raise UsageError(f"prompt file '{p}' does not exist (e.g. assets/prompts/gallery.txt)")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read prompt file '{p}': {first_line(err)}") from None
    items: List[PromptItem] = []
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or first_line(err)
            raise UsageError(f"prompt file '{p}'{where}: not valid YAML: {problem}") from None
        if data is None:
            data = []
        if not isinstance(data, list):
            raise UsageError(
                f"prompt file '{p}' must be a YAML list (lines starting with '- '), not a {type(data).__name__}"
            )
        for raw, sub in zip(data, node.value):
            line = sub.start_mark.line + 1
            where = f"prompt file '{p}' line {line}"
            if isinstance(raw, str):
                prompt, overrides = raw, []
            elif isinstance(raw, dict):
                unknown = sorted(set(map(str, raw)) - {"prompt", "overrides"})
                if unknown:
                    raise UsageError(
                        f"{where}: unknown field '{unknown[0]}' (an item has 'prompt' and optional 'overrides')"
                    )
                prompt = raw.get("prompt")
                if not isinstance(prompt, str):
                    raise UsageError(f"{where}: an item needs 'prompt: <text>', got {raw!r}")
                overrides = _item_overrides(raw.get("overrides"), where)
            else:
                raise UsageError(
                    f"{where}: an item must be a prompt or a mapping with 'prompt' (and 'overrides'), got {raw!r}"
                )
            if not prompt.strip():
                raise UsageError(f"{where}: the prompt is empty")
            items.append(PromptItem(prompt.strip(), overrides, line))
    else:
        for i, raw_line in enumerate(text.splitlines(), start=1):
            s = raw_line.strip()
            if s and not s.startswith("#"):
                items.append(PromptItem(s, [], i))
    if not items:
        raise UsageError(f"prompt file '{p}' holds no prompts (one a line; '#' starts a comment)")
    return items


def parse_seeds(text: Optional[str]) -> Optional[List[int]]:
    """``"0,1,2"`` → ``[0, 1, 2]``; UsageError for anything else."""
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated whole numbers, e.g. 0,1,2 (got '{text}')") from None
    if not seeds or any(s < 0 for s in seeds):
        raise UsageError(f"--seeds must be comma-separated whole numbers >= 0, e.g. 0,1,2 (got '{text}')")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds repeats a seed (got '{text}')")
    return seeds
