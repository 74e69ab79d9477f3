"""A real headless chromium driven over the DevTools protocol, for the viewer tests (no extra packages:
the websocket client is the one viser brings)."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

import numpy as np


def chromium_path() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One headless chromium with one page; use as a context manager."""

    def __init__(self, width: int = 1000, height: int = 700, nice: int = 0):
        exe = chromium_path()
        if exe is None:
            raise RuntimeError("chromium is not installed (apt-get install chromium)")
        self.profile = tempfile.mkdtemp(prefix="dreamperp-chromium-")
        prefix = ["nice", "-n", str(nice)] if nice else []
        self.proc = subprocess.Popen(
            [*prefix, exe, "--headless", "--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--mute-audio",
             "--no-first-run", "--no-default-browser-check", f"--window-size={width},{height}", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().count("\n") >= 1):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start")
            time.sleep(0.05)
        port = int(port_file.read_text().splitlines()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10).read())
        page = next(t for t in targets if t.get("type") == "page")
        from websockets.sync.client import connect

        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.ids = itertools.count(1)

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def click_button(self, text: str) -> bool:
        """Click the first button whose text is ``text``, as a user would; False when there is none."""
        return bool(self.js(
            "(() => { const b = [...document.querySelectorAll('button')].find(b => b.textContent.trim() === %s);"
            " if (!b) return false; b.click(); return true; })()" % json.dumps(text)
        ))

    def click_checkbox(self, label: str) -> bool:
        """Toggle the checkbox whose label is ``label``."""
        return bool(self.js(
            "(() => { const l = [...document.querySelectorAll('label')].find(l => l.textContent.trim() === %s);"
            " if (!l) return false; const id = l.getAttribute('for'); const i = id ? document.getElementById(id) : l.querySelector('input');"
            " if (!i) return false; i.click(); return true; })()" % json.dumps(label)
        ))

    def wait_for(self, expression: str, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.js(expression):
                return True
            time.sleep(0.2)
        return False

    def screenshot(self) -> np.ndarray:
        """The page as uint8 [H, W, 3]."""
        from PIL import Image

        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def need_browser() -> None:
    """Skip without chromium, unless CI (DREAMPERP_CI=1), where its absence is a failure."""
    import pytest

    if chromium_path() is None:
        if os.environ.get("DREAMPERP_CI"):
            pytest.fail("chromium is missing but DREAMPERP_CI is set: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
