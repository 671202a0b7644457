"""A real headless Chromium for the dashboard's tests, driven over the DevTools protocol.

Chromium comes from the Debian packages (`apt-get install chromium`; .ci/run installs it
when missing); playwright cannot download its browsers here, so the tests speak the
Chrome DevTools Protocol themselves, over a websocket with aiohttp, which dask-kong
already depends on. `Browser` starts one Chromium with a profile of its own in a
temporary directory, and `close` ends it by its PID. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import aiohttp

#: Longest wait for Chromium to start, a command to answer, a page to show something.
START_TIMEOUT_S = 20.0
COMMAND_TIMEOUT_S = 15.0

# Walks the DOM into bokeh's shadow roots: bokeh 3 renders each view in one.
DEEP_QUERY_JS = """
function kongDeepAll(selector, root = document) {
  const found = [...root.querySelectorAll(selector)];
  for (const el of root.querySelectorAll('*')) {
    if (el.shadowRoot) found.push(...kongDeepAll(selector, el.shadowRoot));
  }
  return found;
}
"""


def find_chromium() -> str | None:
    """The Chromium on PATH (Debian names it chromium, others chromium-browser)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page, driven over CDP."""

    def __init__(self, width: int = 1280, height: int = 1000) -> None:
        executable = find_chromium()
        if executable is None:
            raise RuntimeError("no chromium on PATH: apt-get install -y chromium")
        self.profile = tempfile.mkdtemp(prefix="kong-chromium-")
        self.log_path = os.path.join(self.profile, "chromium.log")
        with open(self.log_path, "wb") as log:  # the child keeps its own descriptor
            self.process = self._start(executable, log, width, height)
        self.loop = asyncio.new_event_loop()
        self._ids = itertools.count(1)
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self.session_id = ""
        try:
            url = self._wait_for_devtools_url()
            self.loop.run_until_complete(self._connect(url, width, height))
        except BaseException:
            self.close()
            raise

    def _start(
        self, executable: str, log: IO[bytes], width: int, height: int
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                executable,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
                f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,  # its helper processes form a group we end by PID
        )

    def _wait_for_devtools_url(self) -> str:
        """Chromium writes its port and browser path into the profile once it listens."""
        active = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if os.path.exists(active):
                with open(active) as f:
                    lines = f.read().split()
                if len(lines) >= 2:
                    return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited: {self._log_tail()}")
            time.sleep(0.05)
        raise TimeoutError(f"chromium did not start in {START_TIMEOUT_S} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-2000:]

    async def _connect(self, url: str, width: int, height: int) -> None:
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(url, max_msg_size=0)
        target = await self._send("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = await self._send(
            "Target.attachToTarget",
            {"targetId": target["targetId"], "flatten": True},
            session=False,
        )
        self.session_id = attached["sessionId"]
        await self._send("Page.enable")
        await self._send("Runtime.enable")
        await self._send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    async def _send(
        self, method: str, params: dict[str, Any] | None = None, session: bool = True
    ) -> dict[str, Any]:
        assert self._ws is not None
        message: dict[str, Any] = {"id": next(self._ids), "method": method}
        message["params"] = params or {}
        if session:
            message["sessionId"] = self.session_id
        await self._ws.send_str(json.dumps(message))
        async with asyncio.timeout(COMMAND_TIMEOUT_S):
            while True:
                reply = await self._ws.receive()
                if reply.type != aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"devtools connection ended: {reply.type}")
                data = json.loads(reply.data)
                if data.get("id") == message["id"]:
                    if "error" in data:
                        raise RuntimeError(f"{method}: {data['error']}")
                    result: dict[str, Any] = data.get("result", {})
                    return result

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """One CDP command to the page; its result."""
        return self.loop.run_until_complete(self._send(method, params))

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": DEEP_QUERY_JS + expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page raised: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout_s: float = 10.0) -> Any:
        """Evaluate `expression` until it is truthy; its value. TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(expression)
            except RuntimeError as exc:  # the page is still loading its scripts
                last = exc
            else:
                if last:
                    return last
            time.sleep(0.05)
        raise TimeoutError(f"{expression!r} still {last!r} after {timeout_s} s")

    def click(self, x: float, y: float) -> None:
        """A left click at page coordinates, as a user's mouse makes it."""
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
            )

    def screenshot(self, path: str, full_page: bool = True) -> None:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
            )
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
            params["captureBeyondViewport"] = True
        data = self.send("Page.captureScreenshot", params)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        """End Chromium (its process group, by PID) and remove its profile."""
        try:
            if self._ws is not None:
                self.loop.run_until_complete(self._ws.close())
            if self._http is not None:
                self.loop.run_until_complete(self._http.close())
        except Exception:
            pass  # the browser may be gone already; ending it below is what matters
        finally:
            self.loop.close()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        shutil.rmtree(self.profile, ignore_errors=True)


@contextmanager
def browser() -> Iterator[Browser]:
    b = Browser()
    try:
        yield b
    finally:
        b.close()


# -- bokeh pages (the dashboard and the report) -------------------------------------

BOKEH_JS = """
function kongViews(pred) {
  const out = [];
  function walk(v) { if (pred(v)) out.push(v); for (const c of (v.child_views ?? [])) walk(c); }
  for (const v of Object.values(Bokeh.index)) walk(v);
  return out;
}
function kongModels(pred) {
  return Bokeh.documents.flatMap(d => [...d.all_models]).filter(pred);
}
function kongGraphView() {
  return kongViews(v => v.model.type == 'Figure' && v.model.title.text == 'task graph'
                        && v.el.offsetParent !== null)[0];
}
function kongNodes() {
  const view = kongGraphView();
  if (!view) return null;
  return view.model.renderers.find(r => r.type == 'GraphRenderer').node_renderer.data_source;
}
function kongNodeAt(i) {
  const view = kongGraphView();
  const data = kongNodes().data;
  const box = view.canvas_view.el.getBoundingClientRect();
  return [box.x + view.frame.x_scale.compute(data.x[i]),
          box.y + view.frame.y_scale.compute(data.y[i])];
}
function kongDetail() {
  const shown = kongDeepAll('.kong-detail');
  return shown.length ? shown[0].textContent : '';
}
"""


def bokeh(b: Browser, expression: str) -> Any:
    """`expression` evaluated with the helpers above (bokeh's views and models)."""
    return b.evaluate(BOKEH_JS + expression)


def wait_bokeh(b: Browser, expression: str, timeout_s: float = 10.0) -> Any:
    try:
        return b.wait_for(BOKEH_JS + expression, timeout_s)
    except TimeoutError:
        raise TimeoutError(f"{expression!r} not true within {timeout_s} s") from None


def wait_for_graph(b: Browser, tasks: int, timeout_s: float = 15.0) -> None:
    """Until the page drew the task graph with `tasks` nodes."""
    wait_bokeh(
        b,
        f"window.Bokeh && Bokeh.documents.length && kongNodes() && "
        f"kongNodes().data.index.length == {tasks}",
        timeout_s,
    )


def click_task(b: Browser, index: int) -> str:
    """Click task `index` in the drawn graph; the details the page shows then."""
    x, y = bokeh(b, f"kongNodeAt({index})")
    b.click(x, y)
    text: str = wait_bokeh(b, "kongDetail()")
    return text
