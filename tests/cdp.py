"""A minimal Chrome DevTools Protocol client for tests: a real headless Chromium, driven over its websocket.

It starts Chromium with --remote-debugging-port=0 (the port it picks is read from the profile's
DevToolsActivePort file), opens a page, clicks with real mouse events at an element's position,
types with Input.insertText, and waits for a download to complete (Browser.downloadProgress).
Every wait is for an event or a state, with a generous deadline only as a safety net.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path

from websockets.sync.client import connect

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--window-size=1280,1600"]
DEADLINE = 60.0


class CdpError(RuntimeError):
    pass


class Browser:
    def __init__(self, executable: str, profile: Path):
        self.stack = contextlib.ExitStack()
        self.process = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port_file = profile / "DevToolsActivePort"
        end = time.monotonic() + DEADLINE
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self.process.poll() is not None or time.monotonic() > end:
                self.close()
                raise CdpError(f"Chromium did not open its DevTools port: {self.process.stderr.read()[-800:]!r}")
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self.ws = self.stack.enter_context(connect(f"ws://127.0.0.1:{port}{path}", max_size=64 * 2 ** 20,
                                                   open_timeout=DEADLINE))
        self.next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def close(self) -> None:
        try:
            self.stack.close()
        finally:
            self.process.kill()
            self.process.wait(timeout=30)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _receive(self) -> dict:
        return json.loads(self.ws.recv(timeout=DEADLINE))

    def send(self, method: str, params: dict | None = None, *, browser: bool = False) -> dict:
        """One command; returns its result (events that arrive meanwhile are kept for wait_event)."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session and not browser:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        while True:
            reply = self._receive()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise CdpError(f"{method}: {reply['error']}")
                return reply["result"]
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, predicate=lambda params: True) -> dict:
        while True:
            for i, event in enumerate(self.events):
                if event["method"] == method and predicate(event["params"]):
                    return self.events.pop(i)["params"]
            reply = self._receive()
            if "method" in reply:
                self.events.append(reply)

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, browser=True)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 browser=True)["sessionId"]
        self.send("Page.enable")
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise CdpError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real left click (mouse pressed + released) at the centre of the element."""
        x, y = self.evaluate(f"""(() => {{ const el = document.querySelector({json.dumps(selector)});
            if (!el) throw new Error('no element ' + {json.dumps(selector)});
            el.scrollIntoView({{block: 'center'}}); const r = el.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def type_into(self, selector: str, text: str) -> None:
        """Focus the field (by clicking it), type the text, then move the focus away (fires 'change')."""
        self.click(selector)
        self.send("Input.insertText", {"text": text})
        self.evaluate("document.activeElement.blur()")

    def download_to(self, folder: Path) -> None:
        self.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder),
                                                  "eventsEnabled": True}, browser=True)

    def wait_download(self, folder: Path) -> Path:
        began = self.wait_event("Browser.downloadWillBegin")
        self.wait_event("Browser.downloadProgress",
                        lambda p: p["guid"] == began["guid"] and p["state"] in ("completed", "canceled"))
        path = folder / began["suggestedFilename"]
        if not path.is_file():
            raise CdpError(f"download {began['suggestedFilename']} did not complete in {folder}")
        return path
