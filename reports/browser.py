"""Open a report in headless Chromium and say what happened: errors, figures drawn, load time.

Used by the browser test and `kvcast bench report`. It speaks the Chrome DevTools protocol over
`--remote-debugging-pipe` (file descriptors 3 and 4, NUL-separated JSON), so it needs only the
system's Chromium: no driver binary, no websocket library, no browser download.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvcast.errors import KvcastError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
)

# Page-side probe: per figure element, what Plotly drew.
FIGURE_PROBE = """
(() => Array.from(document.querySelectorAll('.kv-figure')).map(el => {
  const r = el.getBoundingClientRect();
  return {id: el.id, plot_containers: el.querySelectorAll('.plot-container').length,
          main_svgs: el.querySelectorAll('.main-svg').length,
          traces: Array.isArray(el.data) ? el.data.length : 0,
          width: r.width, height: r.height};
}))()
"""


class BrowserError(KvcastError):
    """Chromium is missing, crashed, or the page did not finish within the time allowed."""


def find_chromium() -> str | None:
    """$KVCAST_CHROMIUM if set, else the first Chromium-like browser on PATH."""
    env = os.environ.get("KVCAST_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageReport:
    """What the browser saw when it opened a page."""

    url: str
    ready_ms: float  # performance.now() when every figure had been drawn (from navigation start)
    timings: dict[str, float]  # page-side: when plotly.js was ready, and ms to draw each figure
    wall_s: float  # from the navigation command to that moment, as seen from Python
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions
    figures: list[dict[str, Any]] = field(default_factory=list)
    screenshot: Path | None = None
    eval_results: list[Any] = field(default_factory=list)
    hovers: list[str] = field(default_factory=list)  # hover label text per `hover` selector


class Chromium:
    """A headless Chromium process driven over the DevTools pipe. Use as a context manager."""

    def __init__(self, executable: str | None = None, width: int = 1400, height: int = 900):
        exe = executable or find_chromium()
        if exe is None:
            raise BrowserError(
                "no Chromium found (install Debian's `chromium`, or set KVCAST_CHROMIUM)"
            )
        self.width, self.height = width, height
        self._profile = tempfile.mkdtemp(prefix="kvcast-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire_pipes() -> None:  # runs in the child: the protocol wants fds 3 (in) and 4 (out)
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self._log = open(Path(self._profile) / "chromium.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                exe,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={self._profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            close_fds=False,
            preexec_fn=wire_pipes,  # noqa: PLW1509 - single-threaded caller
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send("Browser.close")
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=10)
        for fd in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        return self._next_id

    def _recv(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_child], [], [], max(left, 0))
            if not ready:
                raise BrowserError("Chromium did not answer in time")
            data = os.read(self._from_child, 1 << 20)
            if not data:
                raise BrowserError(f"Chromium exited (log: {self.log_tail()})")
            self._buf += data
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def log_tail(self) -> str:
        self._log.flush()
        text = (Path(self._profile) / "chromium.log").read_text(errors="replace")
        return text[-800:]

    def call(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout_s: float = 60.0,
    ) -> dict[str, Any]:
        """Send a command; keep events that arrive meanwhile; return the result."""
        mid = self._send(method, params, session)
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self._recv(deadline)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})
            self.events.append(msg)

    def evaluate(self, session: str, expression: str, timeout_s: float = 60.0) -> Any:
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session,
            timeout_s,
        )
        if "exceptionDetails" in result:
            detail = result["exceptionDetails"]
            text = detail.get("exception", {}).get("description") or detail.get("text")
            raise BrowserError(f"page script failed: {text}")
        return result["result"].get("value")

    def open(self, url: str) -> str:
        """Open a tab on url with logging on; return its session id."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            self.call(domain, session=session)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        self.call("Page.navigate", {"url": url}, session)
        return session

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        out = []
        for ev in self.events:
            method, params = ev.get("method"), ev.get("params", {})
            if method == "Runtime.exceptionThrown":
                d = params.get("exceptionDetails", {})
                desc = d.get("exception", {}).get("description") or d.get("text")
                out.append(f"uncaught: {desc} ({d.get('url', '')}:{d.get('lineNumber')})")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                args = [
                    str(a.get("value", a.get("description", ""))) for a in params.get("args", [])
                ]
                out.append("console.error: " + " ".join(args))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                out.append(f"log: {entry.get('text')} ({entry.get('url', '')})")
        return out

    def hover(self, session: str, selector: str) -> str:
        """Move the mouse to the centre of the element (scrolled into view), as a user would;
        return the text of the Plotly hover label that appears in its figure."""
        rect = self.evaluate(
            session,
            f"""(() => {{ const el = document.querySelector({json.dumps(selector)});
                if (!el) return null; el.scrollIntoView({{block: 'center'}});
                const r = el.getBoundingClientRect();
                return {{x: r.left + r.width / 2, y: r.top + r.height / 2}}; }})()""",
        )
        if rect is None:
            raise BrowserError(f"hover: no element matches {selector!r}")
        for dx in (-1, 0):  # a move onto the point, so Plotly sees a mouse move event
            self.call(
                "Input.dispatchMouseEvent",
                {"type": "mouseMoved", "x": rect["x"] + dx, "y": rect["y"]},
                session,
            )
        time.sleep(0.2)
        return self.evaluate(
            session,
            f"""(() => {{ const fig = document.querySelector({json.dumps(selector)})
                .closest('.kv-figure'); const h = fig.querySelector('.hoverlayer');
                return h ? h.textContent : ''; }})()""",
        )

    def screenshot(self, session: str, path: Path) -> Path:
        """A PNG of the whole page (not only the viewport)."""
        height = int(self.evaluate(session, "document.documentElement.scrollHeight"))
        shot = self.call(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1},
            },
            session,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


def check_page(
    html_path: str | Path,
    screenshot: str | Path | None = None,
    timeout_s: float = 60.0,
    scripts: tuple[str, ...] = (),
    hover: tuple[str, ...] = (),
    executable: str | None = None,
) -> PageReport:
    """Open html_path from a file:// URL; wait until the page marks itself ready
    (body[data-ready]); collect errors, per-figure counts, `scripts`' results, the hover label
    shown when the mouse rests on each `hover` selector, and a screenshot."""
    url = Path(html_path).resolve().as_uri()
    with Chromium(executable) as browser:
        t0 = time.monotonic()
        session = browser.open(url)
        deadline = t0 + timeout_s
        while True:
            state = browser.evaluate(
                session, "document.body && document.body.getAttribute('data-ready')"
            )
            if state == "1":
                break
            if browser.errors() and time.monotonic() > t0 + 5:
                break  # a script failed; the page will never mark itself ready
            if time.monotonic() > deadline:
                raise BrowserError(f"{url}: not ready after {timeout_s:.0f} s; {browser.errors()}")
            time.sleep(0.05)
        wall = time.monotonic() - t0
        ready_ms = browser.evaluate(session, "typeof KV === 'object' ? KV.readyMs : null")
        timings = browser.evaluate(session, "typeof KV === 'object' ? KV.timings : {}") or {}
        figures = browser.evaluate(session, FIGURE_PROBE)
        results = [browser.evaluate(session, s) for s in scripts]
        hovers = [browser.hover(session, sel) for sel in hover]
        if hover:  # move away so the screenshot shows no hover label
            browser.call(
                "Input.dispatchMouseEvent", {"type": "mouseMoved", "x": 0, "y": 0}, session
            )
        browser.evaluate(session, "window.scrollTo(0, 0)")
        shot = browser.screenshot(session, Path(screenshot)) if screenshot else None
        time.sleep(0.1)  # let late console messages arrive
        browser.evaluate(session, "0")
        return PageReport(
            url=url,
            ready_ms=float(ready_ms) if ready_ms is not None else float("nan"),
            timings=timings,
            wall_s=wall,
            errors=browser.errors(),
            figures=figures,
            screenshot=shot,
            eval_results=results,
            hovers=hovers,
        )
