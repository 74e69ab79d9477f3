"""``dreamperp doctor``: what this machine runs for a config and why, and a timed step (docs/design.md §13).

A command (docs/design.md §1), beside ``commands/``, one module per part:

- :mod:`.probes`: Python and torch, each GPU, tinycudann, nerfacc's CUDA extension, imageio-ffmpeg,
  Ray, free disk, and what ``scene.encoding: auto`` and ``render.estimator: auto`` resolve to here;
- :mod:`.model`: the config's prior (cached or not, size, gated, a withdrawn id's successor) and ``--fetch``;
- :mod:`.estimate`: the run's peak memory and the prior's FLOPs, traced on the ``meta`` device;
- :mod:`.report`: the report (the ``--json`` output, versioned), its table and the verdict;
- :mod:`.bench`: ``--bench``, training steps timed stage by stage, and the physical floor;
- :mod:`.random_weights`: the full-size prior in random weights, for ``--bench`` and ``tools/gpu_check.sh``;
- :mod:`.command`: :func:`doctor_command`, exit 0 when the config can run here, else 2 with the one thing to fix.
"""

from dreamperp.doctor.command import doctor_command
from dreamperp.doctor.random_weights import random_weight_run

__all__ = ["doctor_command", "random_weight_run"]
