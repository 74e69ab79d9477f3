"""The viser server's lifecycle for the viewer: check the address, start, stop (docs/viewer.md).

A running viewer must not change what training computes: the server leaves Python's global
``random`` as it found it (the checkpoints record it), and websockets' errors become one line in
the run's log instead of a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import random
import socket
from typing import Any, Callable, Iterator, Tuple

from dreamperp.errors import UsageError
from dreamperp.viewer import require_viser


def check_listen(host: str, port: int) -> None:
    """UsageError when ``host`` cannot be listened on at all (a port in use is fine: viser moves on)."""
    if not 0 <= int(port) <= 65535:
        raise UsageError(f"--viewer-port must be within 0..65535 (0: any free port), got {port}")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise UsageError(f"--viewer-host '{host}' is not a host name or address of this machine ({err.strerror}); use 127.0.0.1 or 0.0.0.0") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(address)
        except OSError as err:
            if err.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise UsageError(f"--viewer-host '{host}': cannot listen there ({err.strerror}); use 127.0.0.1 or 0.0.0.0") from None


def _private_ping_random() -> None:
    """websockets draws its keepalive ping payloads from Python's global ``random``, which the
    checkpoints record: give it a generator of its own so a connected browser cannot change them."""
    import websockets.asyncio.connection as connection

    if getattr(connection, "random", random) is random:
        connection.random = random.Random()  # type: ignore[attr-defined]


class _OneLine(logging.Handler):
    """websockets' errors (a client sending garbage, say) as one line in the run's log, no traceback."""

    def __init__(self, log: Callable[[str], None]):
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        detail = f"{type(exc).__name__}: {exc}" if exc is not None else record.getMessage()
        self.log(f"viewer: dropped a browser connection ({detail})")


def _log_websocket_errors(log: Callable[[str], None]) -> None:
    logger = logging.getLogger("websockets")
    if not any(isinstance(h, _OneLine) for h in logger.handlers):
        logger.addHandler(_OneLine(log))
        logger.propagate = False


def start_server(host: str, port: int, log: Callable[[str], None]) -> Tuple[Any, str]:
    """A viser server on ``host:port`` (the next free port when it is taken, said in the log);
    returns ``(server, url)``. The URL is logged once."""
    viser = require_viser()
    check_listen(host, port)
    _private_ping_random()
    _log_websocket_errors(log)
    with contextlib.redirect_stdout(io.StringIO()), same_python_random():  # viser's banner (rich draws link ids from `random`)
        server = viser.ViserServer(host=host, port=int(port), label="dreamperp", verbose=False)
    actual = int(server.get_port())
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else (f"[{host}]" if ":" in host else host)
    url = f"http://{shown}:{actual}"
    if port and actual != int(port):
        log(f"viewer: port {port} is in use; the viewer is on the next free port, {url}")
    else:
        log(f"viewer at {url}")
    return server, url


@contextlib.contextmanager
def same_python_random() -> Iterator[None]:
    """Leave Python's global ``random`` as it was (the checkpoints record it)."""
    state = random.getstate()
    try:
        yield
    finally:
        random.setstate(state)


def stop_server(server: Any) -> None:
    """Stop a viser server, without its 'Server stopped' line on stdout."""
    with contextlib.redirect_stdout(io.StringIO()), same_python_random():
        try:
            server.stop()
        except Exception:  # already stopped, or the loop died: nothing left to close
            pass
