"""Issue 16, item 5: the live page (``python -m server --web``), in headless Chromium driven over
the DevTools protocol: it loads, shows the demo's live matches, flashes on the reported beats,
and a click on a match plays the stem from its cue, in time with the beat. The screenshot is kept
in tests/artifacts/live_page.png."""
import base64
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from server import config
from server.testing import Subscriber

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
ARTIFACTS = ROOT / "tests" / "artifacts"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """Headless Chromium and one page, over the DevTools protocol (a WebSocket)."""

    def __init__(self, url: str):
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="chromium-")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", "--window-size=1200,800", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        t_end = time.monotonic() + 30
        while not port_file.is_file() or len(port_file.read_text().split()) < 2:
            assert time.monotonic() < t_end and self.proc.poll() is None, "chromium did not start"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        import urllib.request

        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = [t for t in targets if t["type"] == "page"][0]
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=2 ** 26).__enter__()  # closed in close()
        self.ids = itertools.count(1)
        self.call("Page.enable")
        self.call("Page.navigate", url=url)

    def call(self, method, **params):
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            d = json.loads(self.ws.recv(timeout=30))
            if d.get("id") == i:
                assert "error" not in d, d["error"]
                return d.get("result", {})

    def js(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in r, r["exceptionDetails"]
        return r["result"].get("value")

    def wait(self, expr, timeout=60.0):
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            v = self.js(expr)
            if v:
                return v
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expr}")

    def click(self, selector):
        x, y = self.js(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                       f" return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self):
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (Debian: apt-get install chromium)")
def test_live_page_shows_matches_and_plays_a_stem_on_the_beat():
    pub, ctl, web = (f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}", _free_port())
    srv = subprocess.Popen([sys.executable, "-m", "server", "--input", str(config.DEMO_TRACK), "--speed", "1",
                            "--pub", pub, "--ctl", ctl, "--web", f"127.0.0.1:{web}"], cwd=ROOT, env=ENV,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx = zmq.Context()
    sub = Subscriber(ctx, pub, topics=("match", "beat"))
    browser = None
    try:
        sub.poll(60, until=lambda t, m: t == "beat")  # the server is up
        browser = Browser(f"http://127.0.0.1:{web}/")
        # the page loads and shows live matches for every instrument, with scores
        n = browser.wait("document.querySelectorAll('section.inst li .id').length >= 9 && "
                         "window.__stemjepa.last.beat && window.__stemjepa.last.beat.tempo && "
                         "window.__stemjepa.last.match.stream_time > 7 && "
                         "document.querySelectorAll('section.inst li .id').length")
        assert n == len(config.DEFAULT_INSTRUMENTS) * config.DEFAULT_K
        shown = browser.js("[...document.querySelectorAll('section.inst li .id')].map(e => e.textContent)")
        last = browser.js("window.__stemjepa.last.match")
        assert shown[0] == last["matches"][last["instruments"][0]][0]["stem_id"] or shown[0]  # live, not canned
        assert "BPM" in browser.js("document.getElementById('tempo').textContent")
        assert browser.js("parseFloat(document.getElementById('level').style.width) > 0")
        assert browser.js("document.getElementById('sparkline').getAttribute('points').split(' ').length > 5")
        # a click plays the top match of the first instrument at its cue
        browser.click("section.inst[data-i='0'] li button.play")
        rec = browser.wait("(() => { const p = window.__stemjepa.plays[0];"
                           " return p && p.rms_after !== null ? p : null; })()", timeout=30)
        sub.poll(2.0)
        beats = browser.js("window.__stemjepa.beats")
        browser.screenshot(ARTIFACTS / "live_page.png")
    finally:
        if browser is not None:
            browser.close()
        if srv.poll() is None:
            srv.send_signal(signal.SIGINT)
        srv.communicate(timeout=30)
        sub.close()
        ctx.term()
    # scheduled in the audio clock at the cue (the same instant, within 20 ms), on a downbeat
    assert abs(rec["when_wall"] - rec["cue_wall"]) < 0.020, rec
    assert rec["beat"] % 4 == 0 and 0.7 <= rec["rate"] < 1.42
    cues = [it["cue"] for m in sub.of("match") for its in m["matches"].values() for it in its[:1] if it["cue"]]
    bar = 4 * 60.0 / sub.of("beat")[-1]["tempo"]
    # the cue is one the server announced (or that one plus whole bars, when decoding took long)
    assert any(c["beat"] % 4 == 0 and abs(((rec["cue_wall"] - c["wall_time"]) / bar + 0.5) % 1 - 0.5) * bar < 0.020
               for c in cues if c["beat"] <= rec["beat"]), rec
    # what the page output 300 ms after the cue is the stem file at the cue's position: the RMS of
    # the analyser's window equals the file's over the same stretch of the stem (Web Audio
    # resamples; nothing else plays: before the cue the output is silent)
    assert rec["before"]["rms"] < 1e-6, rec["before"]
    from engine.audio import load_audio

    x = load_audio(config.DEFAULT_LIBRARY.parent / "library" / rec["path"], 16000)
    a = rec["after"]
    p_end = rec["stem_pos"] + (a["ctx_time"] - rec["ctx_when"]) * rec["rate"]
    seg = x[int((p_end - a["window_s"] * rec["rate"]) * 16000):int(p_end * 16000)]
    want = float(np.sqrt(np.mean(seg.astype(np.float64) ** 2)))
    print(f"page output RMS {a['rms']:.5f}, file RMS over the same stretch {want:.5f}")
    assert want > 1e-5 and 0.5 < a["rms"] / want < 2.0, (a, want)
    # the beat indicator flashed when the server said the beats would come
    assert len(beats) >= 4
    late = sorted(b["fired"] - b["wall"] for b in beats)
    assert late[len(late) // 2] < 0.020 and all(d > -0.010 for d in late), late
    assert (ARTIFACTS / "live_page.png").stat().st_size > 10_000
