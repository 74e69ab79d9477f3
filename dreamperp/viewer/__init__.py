"""Browser viewer on viser (docs/viewer.md): ``dreamperp train --viewer`` and ``dreamperp view RUN_DIR``.

The commands layer (docs/design.md §1): it watches training through the loop's hooks and reads
finished runs through the run-folder and export APIs. viser is the optional ``viewer`` extra.
"""

from __future__ import annotations

from typing import Any

from dreamperp.errors import UsageError

DEFAULT_PORT = 7007
INSTALL_HINT = 'pip install "dreamperp[viewer]"'


def require_viser(flag: str = "--viewer") -> Any:
    """The viser module, or a UsageError naming the extra to install."""
    try:
        import viser
    except ImportError:
        raise UsageError(f"{flag} needs the viewer extra (viser), which is not installed: {INSTALL_HINT}") from None
    return viser
