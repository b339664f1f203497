"""A minimal headless-Chromium driver over the DevTools protocol, for tests of the live page.

Starts Debian's ``chromium`` with ``--headless --no-sandbox --disable-gpu`` (plus the flags that keep
it off the network) on a free loopback debugging port, in its own process group, and stops it by PID.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

import websockets

from recstream.local_services import free_port

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1300,1000",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    def __init__(self) -> None:
        path = chromium_path()
        if path is None:
            raise RuntimeError("chromium not found (apt-get install chromium)")
        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="recstream-chromium-")
        # Chromium makes its own temporary directories (org.chromium.Chromium.*, the singleton's socket) under
        # TMPDIR and leaves them when it is stopped by a signal: in the profile, they go with it in stop().
        scratch = os.path.join(self.profile, "tmp")
        os.mkdir(scratch)
        self.process = subprocess.Popen(
            [path, *FLAGS, f"--user-data-dir={self.profile}", f"--remote-debugging-port={self.port}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "TMPDIR": scratch},
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json", timeout=1) as response:
                    pages = [t for t in json.load(response) if t["type"] == "page"]
                if pages:
                    self.ws_url = pages[0]["webSocketDebuggerUrl"]
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("chromium did not open its debugging port within 30 s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    """One tab: commands, JavaScript evaluation, dialogs and screenshots."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict] = []

    async def send(self, method: str, **params: Any) -> dict:
        self.next_id += 1
        await self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.25)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    async def answer_prompt(self, text: str, timeout: float = 10) -> str:
        """Wait for a JavaScript dialog (prompt) and accept it with ``text``; return its message."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if event.get("method") == "Page.javascriptDialogOpening":
                    self.events.remove(event)
                    await self.send("Page.handleJavaScriptDialog", accept=True, promptText=text)
                    return event["params"]["message"]
            try:
                message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout=0.25))
                self.events.append(message)
            except TimeoutError:
                pass
        raise AssertionError("no dialog opened")

    async def screenshot(self, path: str) -> None:
        data = await self.send("Page.captureScreenshot", format="png")
        with open(path, "wb") as out:
            out.write(base64.b64decode(data["data"]))


async def open_page(browser: Browser) -> tuple[Any, Page]:
    ws = await websockets.connect(browser.ws_url, max_size=50_000_000)
    page = Page(ws)
    await page.send("Page.enable")
    await page.send("Runtime.enable")
    return ws, page
