"""View / family / colour classifier of toy-world images (docs/design.md §10).

A small CNN on 32x32 RGB images in [0, 1] (other sizes are area-resized), with three heads: view
(VIEWS: front, side, back, overhead, by the rule of ``research.toy.world.view_of``: overhead when
elevation > 60°, else front for |azimuth| < 45°, side for 45°-135°, back above 135°), family
(FAMILIES) and colour (COLOUR_NAMES). Saved as a folder: ``config.json`` + ``model.safetensors``.
Retrained by ``tools/train_toy_classifier.py``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamperp.errors import UsageError
from research.toy.captions import VIEWS
from research.toy.world import COLOUR_NAMES, FAMILIES

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
HEADS = ("view", "family", "colour")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
    )


class ToyClassifier(nn.Module):
    """CNN ``[B, 3, H, W]`` in [0, 1] → logits per head: view ``[B, 4]``, family ``[B, 3]``, colour ``[B, 4]``."""

    def __init__(self, channels: Sequence[int] = (16, 32, 64), size: int = 32):
        super().__init__()
        self.channels = list(channels)
        self.size = int(size)
        layers: list[nn.Module] = []
        cin = 3
        for c in self.channels:
            layers += [_block(cin, c), nn.AvgPool2d(2)]
            cin = c
        self.features = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({
            "view": nn.Linear(cin, len(VIEWS)),
            "family": nn.Linear(cin, len(FAMILIES)),
            "colour": nn.Linear(cin, len(COLOUR_NAMES)),
        })

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.shape[-2:] != (self.size, self.size):
            images = F.interpolate(images, size=(self.size, self.size), mode="area")
        h = self.features(images * 2 - 1)
        # Mean and max pooling: the max keeps small strong cues (eyes, beak) that a mean would dilute.
        feat = h.mean((2, 3)) + h.amax((2, 3))
        return {k: head(feat) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: Tensor) -> dict[str, Tensor]:
        """Predicted indices per head ``[B]`` (into VIEWS, FAMILIES, COLOUR_NAMES)."""
        was = self.training
        self.eval()
        out = {k: v.argmax(-1) for k, v in self(images).items()}
        self.train(was)
        return out

    def config(self) -> dict:
        return {
            "channels": self.channels,
            "size": self.size,
            "views": list(VIEWS),
            "families": list(FAMILIES),
            "colours": list(COLOUR_NAMES),
            "view_rule": "overhead if elevation > 60 deg; else front |azimuth| < 45, side 45-135, back > 135",
        }

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2) + "\n")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(out / WEIGHTS_FILE))
        return out

    @classmethod
    def load(cls, folder: str | Path, device: torch.device | str = "cpu") -> ToyClassifier:
        from safetensors.torch import load_file

        path = Path(folder)
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise UsageError(f"'{path}' is not a toy classifier folder (needs {CONFIG_FILE} and {WEIGHTS_FILE}); rebuild it with tools/train_toy_classifier.py")
        cfg = json.loads((path / CONFIG_FILE).read_text())
        if cfg.get("views") != list(VIEWS) or cfg.get("families") != list(FAMILIES) or cfg.get("colours") != list(COLOUR_NAMES):
            raise UsageError(f"the toy classifier in '{path}' was trained for other classes: rebuild it with tools/train_toy_classifier.py")
        model = cls(cfg["channels"], cfg["size"])
        model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
        return model.to(device).eval()
