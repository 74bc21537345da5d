"""Headless Chromium for the tests that look at a page as a person would (the report, the demo).

Driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``), so no extra packages
and no debugging port. Every wait is bounded: each reply by the browser's overall deadline, each
``wait_for`` by its own.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
    "--window-size=1400,1000",
)


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (no extra packages)."""

    def __init__(self, url: str, profile: Path, timeout: float = 600) -> None:
        if CHROMIUM is None:
            raise RuntimeError("no chromium on PATH (apt-get install chromium)")
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()

        def wire() -> None:  # the protocol pipe is fds 3 (commands) and 4 (replies)
            os.dup2(os.dup(to_browser_r), 3)
            os.dup2(os.dup(from_browser_w), 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", url],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            preexec_fn=wire,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.writer = os.fdopen(to_browser_w, "wb", buffering=0)
        self.reader = os.fdopen(from_browser_r, "rb", buffering=0)
        self.buffer = b""
        self.last_id = 0
        self.watched: set[str] = set()  # events (by method) kept in self.events as they arrive
        self.events: list[dict] = []
        self.deadline = time.monotonic() + timeout
        try:
            targets = self.send("Target.getTargets")["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            self.session = self.send(
                "Target.attachToTarget", targetId=page["targetId"], flatten=True
            )["sessionId"]
        except BaseException:
            self.close()
            raise

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.writer.write(json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                left = self.deadline - time.monotonic()
                if left <= 0 or not select.select([self.reader], [], [], left)[0]:
                    raise TimeoutError(f"no reply from Chromium to {method}")
                chunk = self.reader.read(1 << 16)
                if not chunk:
                    raise RuntimeError("Chromium closed the protocol pipe")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if "method" in reply and reply["method"] in self.watched:
                self.events.append(reply)
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str, context: int | None = None):
        extra = {"contextId": context} if context is not None else {}
        result = self.send(
            "Runtime.evaluate",
            self.session,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
            **extra,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 120):
        end = time.monotonic() + seconds
        error = None
        while time.monotonic() < end:
            try:  # the page may still be loading
                value = self.evaluate(expression)
            except RuntimeError as exc:
                value, error = None, exc
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"not shown within {seconds} s: {expression} (last error: {error})")

    def type_into(self, selector: str, text: str, seconds: float = 60) -> None:
        """Empty the field at ``selector``, focus it and type ``text`` as keyboard input."""
        self.wait_for(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return false;"
            " e.focus(); e.select(); return document.activeElement === e; })()",
            seconds,
        )
        self.send("Input.insertText", self.session, text=text)  # replaces the selected text
        self.wait_for(
            f"document.querySelector({json.dumps(selector)}).value === {json.dumps(text)}", seconds
        )

    def click(self, selector: str, seconds: float = 60) -> None:
        """Click the element at ``selector`` once it is there."""
        self.wait_for(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (e) e.click(); return !!e; })()",
            seconds,
        )

    def screenshot(self, path: Path) -> None:
        """The page as a PNG (to look at what a test saw)."""
        data = self.send("Page.captureScreenshot", self.session, format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def requested_urls(self) -> list[str]:
        """Every URL the page has asked for since :meth:`watch_requests`."""
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e["method"] == "Network.requestWillBeSent"
        ]

    def watch_requests(self) -> None:
        """Record the page's network requests from now on (see :meth:`requested_urls`)."""
        self.watched.add("Network.requestWillBeSent")
        self.send("Network.enable", self.session)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", self.session, url=url)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.writer.close()
        self.reader.close()
