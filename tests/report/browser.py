"""Drive Debian's headless Chromium over the DevTools protocol on a pipe (no ports, no downloads).

``--remote-debugging-pipe`` makes Chromium read protocol commands from fd 3
and write replies and events to fd 4, as NUL-terminated JSON. That is all
the browser test needs: open a page, watch every network request it makes,
evaluate JavaScript, move the mouse, take a screenshot.

    >>> with Browser() as b:  # doctest: +SKIP
    ...     page = b.open(Path("timeline.html"))
    ...     page.evaluate("document.title")
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Flags that work here: no sandbox (root), no GPU, nothing phoning home.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1600,1000",
)
#: Every protocol call gets this long; a page that renders slower is a failure, not a hang.
CALL_TIMEOUT = 30.0


class BrowserError(RuntimeError):
    pass


class Browser:
    """One Chromium process with a fresh profile, spoken to over its debugging pipe."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="hp-chromium-")
        self.proc: subprocess.Popen[bytes] | None = None
        self._next_id = 0
        self._buffer = b""
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> Browser:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def fds() -> None:
            # Chromium expects its end of the pipes on fd 3 (commands) and fd 4 (replies).
            hi_r, hi_w = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=fds,
            close_fds=False,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(Exception):
                    self.call("Browser.close", timeout=5)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()  # our own child, by its pid
                    self.proc.wait(timeout=10)
        finally:
            for fd in (self._to_browser, self._from_browser):
                with contextlib.suppress(OSError):
                    os.close(fd)
            shutil.rmtree(self.profile, ignore_errors=True)

    # -- the protocol -----------------------------------------------------------------
    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = CALL_TIMEOUT,
    ) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            for reply in self._read(deadline):
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise BrowserError(f"{method}: {reply['error']}")
                    result: dict[str, Any] = reply.get("result", {})
                    return result
                self.events.append(reply)

    def wait_event(self, method: str, timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.extend(self._read(deadline))

    def wait_for_target(self, match: Any, timeout: float = 10.0) -> str:
        """The URL of a new or navigated tab whose URL satisfies ``match`` (needs discovery on)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") in ("Target.targetCreated", "Target.targetInfoChanged"):
                    url = event["params"]["targetInfo"].get("url", "")
                    if match(url):
                        return str(url)
            self.events.extend(self._read(deadline))

    def _read(self, deadline: float) -> list[dict[str, Any]]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BrowserError("Chromium did not answer in time")
        ready, _, _ = select.select([self._from_browser], [], [], left)
        if not ready:
            raise BrowserError("Chromium did not answer in time")
        chunk = os.read(self._from_browser, 1 << 20)
        if not chunk:
            raise BrowserError("Chromium closed its debugging pipe (did it crash?)")
        self._buffer += chunk
        *messages, self._buffer = self._buffer.split(b"\0")
        return [json.loads(m) for m in messages if m]

    def open(self, path: Path) -> Page:
        """A new tab that records its network requests, then loads ``path``."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        page = Page(self, session)
        for domain in ("Network", "Page", "Runtime"):
            self.call(f"{domain}.enable", session=session)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1600, "height": 1000, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        self.call("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        self.wait_event("Page.loadEventFired")
        return page


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    def evaluate(self, expression: str, timeout: float = CALL_TIMEOUT) -> Any:
        reply = self.browser.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=self.session,
            timeout=timeout,
        )
        if "exceptionDetails" in reply:
            raise BrowserError(f"JavaScript failed: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.1) + 1):
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        raise BrowserError(f"never true: {expression}")

    def hover(self, x: float, y: float) -> None:
        self.browser.call(
            "Input.dispatchMouseEvent",
            {"type": "mouseMoved", "x": x, "y": y},
            session=self.session,
        )

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.browser.call(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
                session=self.session,
            )

    def screenshot(self, path: Path) -> Path:
        data = self.browser.call(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
            session=self.session,
        )["data"]  # fmt: skip
        path.write_bytes(base64.b64decode(data))
        return path

    def requests(self) -> list[str]:
        """Every URL this tab asked for (Network.requestWillBeSent), so far."""
        self.browser.events.extend(self._drain())
        return [
            e["params"]["request"]["url"]
            for e in self.browser.events
            if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") == self.session
        ]

    def _drain(self) -> list[dict[str, Any]]:
        try:
            return self.browser._read(time.monotonic() + 0.3)
        except BrowserError:
            return []
