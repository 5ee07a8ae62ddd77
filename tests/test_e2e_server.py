"""End to end (issue 6 acceptance): ``python -m server`` as its own process replays a track whose
stems are in the library, a subscriber listens over tcp loopback, a REQ client drives it.

Assets: the shipped model + demo library + demo track when they exist (then the accuracy checks
are enforced); otherwise a freshly initialised micro checkpoint exported with ``export`` and a
library built from a synthetic dataset (``server_assets``, built once per session). A random model
cannot retrieve the right stems or find the beats, so with it those two numbers are measured and
printed, not asserted (marked "RANDOM MODEL"). The other tests (signals, CLI refusals, listen tool,
Node subscriber) always run the real engine on the session's micro model directory.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from server import config, protocol as P
from server.testing import Subscriber, request, seq_gaps, write_click_track

pytestmark = pytest.mark.slow  # the server as a process, end to end: the slow tier (the CLI's errors stay fast in test_cli)
ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def addrs():
    return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"


def demo_truth():
    """(track_id, beats) of the shipped demo track when its sidecar says so, else (None, None)."""
    side = config.DEMO_TRACK.with_suffix(".json")
    if side.is_file():
        d = json.loads(side.read_text())
        return d.get("track_id"), d.get("beats")
    return None, None


@pytest.fixture(scope="module")
def assets(request):
    shipped = (config.model_present(config.DEFAULT_MODEL_DIR) and config.DEFAULT_LIBRARY.is_file()
               and config.DEMO_TRACK.is_file())
    if shipped:
        from export.cache import ensure_built

        ensure_built(config.DEFAULT_MODEL_DIR)  # packed: build its forms once before servers start on it
        tid, beats = demo_truth()
        return {"trained": True, "model": config.DEFAULT_MODEL_DIR, "library": config.DEFAULT_LIBRARY,
                "track": config.DEMO_TRACK, "track_id": tid, "beats": beats,
                "instruments": config.DEFAULT_INSTRUMENTS, "speed": 1.0}
    server_assets = request.getfixturevalue("server_assets")  # built once per session, see conftest.py
    bpm = 100.0  # track0 of write_dataset: drums on every beat from 0
    return {"trained": False, "model": server_assets.model, "library": server_assets.library,
            "track": server_assets.dataset / "track0" / "mixture.wav", "track_id": "track0",
            "beats": list(np.arange(0, 8.0, 60.0 / bpm)), "instruments": ["electric bass", "drum kit"], "speed": 2.0}


def start_server(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "server", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def stop(p, sig=signal.SIGINT, timeout=10):
    if p.poll() is None:
        p.send_signal(sig)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        raise AssertionError(f"server did not stop on {sig}:\n{out}")
    return p.returncode, out


def wait_ready(ctx, ctl, p, timeout=60):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if p.poll() is not None:
            raise AssertionError("server exited during start-up:\n" + p.stdout.read())
        try:
            if request(ctx, ctl, {"cmd": "ping"}, timeout_s=1.0)["ok"]:
                return
        except TimeoutError:
            pass
    raise AssertionError("server did not answer ping")


def test_e2e_replayed_track(assets):
    pub, ctl = addrs()
    args = ["--model", str(assets["model"]), "--library", str(assets["library"]), "--input", str(assets["track"]),
            "--library-root", str(Path(assets["library"]).parent), "--speed", str(assets["speed"]), "--instruments", ",".join(assets["instruments"]), "--k", "5",
            "--pub", pub, "--ctl", ctl, "--threads", "1"]
    ctx = zmq.Context()
    p = start_server(args)
    try:
        wait_ready(ctx, ctl, p)
        sub = Subscriber(ctx, pub)
        R = lambda obj: request(ctx, ctl, obj, timeout_s=10)  # noqa: E731
        # let it run, then drive it through every command and check each is obeyed
        sub.poll(2.0 / assets["speed"] + 1.5, until=lambda t, m: t == "match" and m["ready"])
        st = R({"cmd": "status"})
        assert st["ok"] and not P.validate_message("status", st["status"])
        assert st["status"]["library"]["stems"] > 0 and st["status"]["backend"]
        assert R({"cmd": "ping"})["pong"]
        assert R({"cmd": "get_instruments"})["instruments"] == assets["instruments"]
        r = R({"cmd": "set_k", "k": 3})
        assert r["ok"]
        n0 = len(sub.msgs)
        sub.poll(3, until=lambda t, m: t == "match" and m["ready"] and m["signal"] and m["k"] == 3)
        last = [m for m in sub.of("match") if m["ready"] and m["signal"]][-1]
        assert last["k"] == 3 and all(len(v) == 3 for v in last["matches"].values()), {i: [m["stem_id"] for m in v] for i, v in last["matches"].items()}
        r = R({"cmd": "set_instruments", "instruments": assets["instruments"][:1]})
        assert r["ok"]
        sub.poll(3, until=lambda t, m: t == "match" and m["instruments"] == assets["instruments"][:1])
        assert sub.of("match")[-1]["instruments"] == assets["instruments"][:1]
        assert R({"cmd": "set_instruments", "instruments": assets["instruments"]})["ok"]
        assert R({"cmd": "set_k", "k": 5})["ok"]
        r = R({"cmd": "set_library", "path": str(assets["library"])})
        assert r["ok"] and r["library"]["stems"] > 0
        r = R({"cmd": "set_library", "path": str(assets["model"] / "manifest.json")})
        assert not r["ok"] and r["error"]["code"] == "library_error"
        assert R({"cmd": "restrict_category", "enabled": False})["ok"]
        assert R({"cmd": "pause"})["state"] == "paused"
        time.sleep(0.3)
        k0 = len(sub.of("match"))
        sub.poll(0.5)
        assert len(sub.of("match")) == k0, "no match while paused"
        assert R({"cmd": "resume"})["state"] == "running"
        r = R({"cmd": "bogus"})
        assert r["error"]["code"] == "unknown_cmd"
        # run to the end of the file: the server exits by itself
        sub.poll(40, until=lambda t, m: t == "status" and m["state"] == "finished")
        rc, out = stop(p, timeout=15)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert rc == 0, out
    assert not sub.errors, sub.errors[:5]
    matches, beats, status = sub.of("match"), sub.of("beat"), sub.of("status")
    assert status and status[-1]["state"] == "finished", out[-2000:]
    final = status[-1]
    # seq without gaps per topic; hop gaps only where the server counted drops
    for msgs in (matches, beats, status):
        assert seq_gaps(msgs) == 0
    hops = [m["hop"] for m in matches]
    hop_gaps = sum(b - a - 1 for a, b in zip(hops, hops[1:]) if b > a)
    assert hop_gaps <= final["counters"]["drops"] + 2, (hop_gaps, final["counters"])  # +2: pause/resume resync
    # latency as the subscriber sees it
    lat = np.array([m["latency_ms"] for m in matches if m["ready"]])
    recv_lat = np.array([(t_recv - m["wall_time"]) * 1000 + m["latency_ms"] for tp, m, t_recv in sub.msgs
                         if tp == "match" and m["ready"]])
    p50, p99 = np.percentile(recv_lat, [50, 99])
    print(f"\nE2E hop latency at the subscriber ({'trained' if assets['trained'] else 'RANDOM MODEL'}, "
          f"{len(recv_lat)} hops, speed {assets['speed']}): p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
          f"server-side p50 {final['latency']['p50']} p99 {final['latency']['p99']} ms; drops {final['counters']['drops']}")
    assert p50 < 500, recv_lat
    # retrieval: the track's own stems among the top-k
    tid = assets["track_id"]
    ready = [m for m in matches if m["ready"] and m["k"] == 5 and len(m["instruments"]) == len(assets["instruments"])]
    if tid is not None and ready:
        hit = np.mean([any(it["track_id"] == tid for it in m["matches"][inst])
                       for m in ready for inst in m["instruments"]])
        print(f"own-track stems in top-5: {hit:.0%} of (hop, instrument) pairs")
        if assets["trained"]:
            assert hit > 0.5
    # beats within 70 ms of ground truth
    if assets["beats"]:
        truth = np.asarray(assets["beats"])
        got = sorted({round(b, 3) for m in beats for b in m["beats_in_hop"]})
        got = np.array([b for b in got if truth[0] + 2.0 <= b <= truth[-1]])
        if got.size:
            near = np.mean([np.min(np.abs(truth - b)) <= 0.07 for b in got])
            print(f"beats within 70 ms of truth: {near:.0%} of {got.size}")
            if assets["trained"]:
                assert near > 0.6
        elif assets["trained"]:
            raise AssertionError("no beats detected")


def test_sigint_and_sigterm_stop_cleanly(tmp_path, server_assets):
    wav = tmp_path / "click.wav"
    write_click_track(wav, seconds=2.0)
    for sig in (signal.SIGINT, signal.SIGTERM):
        pub, ctl = addrs()
        ctx = zmq.Context()
        p = start_server([*server_assets.cli_args(), "--instruments", "drums", "--input", str(wav), "--loop",
                          "--pub", pub, "--ctl", ctl])
        try:
            wait_ready(ctx, ctl, p, timeout=20)
            sub = Subscriber(ctx, pub)
            sub.poll(3, until=lambda t, m: t == "match")
            assert sub.of("match")
            t0 = time.monotonic()
            rc, out = stop(p, sig)
            assert rc == 0, out
            assert time.monotonic() - t0 < 5
            assert "clean shutdown" in out
            sub.close()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            ctx.destroy(linger=0)


def test_cli_refuses_non_loopback_without_keys(tmp_path, server_assets):
    write_click_track(tmp_path / "x.wav", seconds=1.0)
    r = subprocess.run([sys.executable, "-m", "server", *server_assets.cli_args(), "--instruments", "drums",
                        "--input", str(tmp_path / "x.wav"), "--pub", "tcp://0.0.0.0:25999"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "CURVE" in r.stderr and "server.keys" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_missing_model_or_library_explained(tmp_path, server_assets):
    """A missing model directory or library index: exit status 2, a message naming each missing
    path and the command that builds it, no traceback."""
    wav = tmp_path / "x.wav"
    write_click_track(wav, seconds=1.0)
    pub, ctl = addrs()

    def run(*a):
        return subprocess.run([sys.executable, "-m", "server", *a, "--input", str(wav), "--pub", pub, "--ctl", ctl],
                              cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=30)

    r = run("--model", str(tmp_path / "no_model"), "--library", str(tmp_path / "no_lib.npz"))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert f"model directory {tmp_path / 'no_model'} is missing" in r.stderr and "python -m export" in r.stderr
    assert f"stem library index {tmp_path / 'no_lib.npz'} is missing" in r.stderr
    assert "python -m engine.library build" in r.stderr
    r = run("--model", str(server_assets.model), "--library", str(tmp_path / "no_lib.npz"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no_lib.npz is missing" in r.stderr and "model directory" not in r.stderr
    # a library built by another model is refused with the rebuild command
    r = run("--model", str(server_assets.model), "--library", str(server_assets.other_model_library))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "another model" in r.stderr and "python -m engine.library build" in r.stderr
    # the defaults: whatever of engine/assets/model and the demo library is absent is named
    if not (config.model_present(config.DEFAULT_MODEL_DIR) and config.DEFAULT_LIBRARY.is_file()):
        r = subprocess.run([sys.executable, "-m", "server", "--input", str(wav), "--pub", pub, "--ctl", ctl],
                           cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        if not config.model_present(config.DEFAULT_MODEL_DIR):
            assert "the default model directory engine/assets/model is missing" in r.stderr
            assert "python -m export CHECKPOINT engine/assets/model" in r.stderr
        if not config.DEFAULT_LIBRARY.is_file():
            assert "the default stem library index engine/assets/demo/library.npz is missing" in r.stderr
            assert "python -m engine.library build engine/assets/demo/library" in r.stderr


def test_listen_tool(tmp_path, server_assets):
    wav = tmp_path / "click.wav"
    write_click_track(wav, seconds=2.0)
    pub, ctl = addrs()
    p = start_server([*server_assets.cli_args(), "--instruments", "drums", "--input", str(wav), "--loop",
                      "--pub", pub, "--ctl", ctl])
    try:
        # 30 messages: the first second's hops are not ready (no beat message yet)
        r = subprocess.run([sys.executable, "-m", "server.listen", pub, "--count", "30", "--timeout", "20", "--check"],
                           cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=30)
    finally:
        stop(p)
    assert r.returncode == 0, r.stdout + r.stderr
    # a beat line: a tracked tempo, or "no beat" while the tracker hears none -- this test's model
    # is untrained, and its beat head's activation need not make a pulse of the clicks in 2 s
    assert re.search(r"^beat +(\d+\.\d +BPM|no beat) ", r.stdout, re.M), r.stdout
    assert re.search(r"^  drums +[+-]\d\.\d\d track\d/", r.stdout, re.M), r.stdout  # matches from the library


NODE_DIR = ROOT / "examples" / "max"


@pytest.mark.skipif(shutil.which("node") is None or not (NODE_DIR / "node_modules" / "zeromq").is_dir(),
                    reason="node or examples/max/node_modules missing (scripts/setup_system.sh installs them)")
def test_node_subscriber_receives(tmp_path, server_assets):
    wav = tmp_path / "click.wav"
    write_click_track(wav, seconds=2.0)
    pub, ctl = addrs()
    p = start_server([*server_assets.cli_args(), "--instruments", "drums", "--input", str(wav), "--loop",
                      "--pub", pub, "--ctl", ctl])
    try:
        r = subprocess.run(["node", str(NODE_DIR / "subscriber.js"), pub, "--ctl", ctl, "--ping", "--json",
                            "--count", "30", "--timeout", "20"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    finally:
        stop(p)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [ln.split(" ", 1) for ln in r.stdout.splitlines() if ln.strip()]
    kinds = [k for k, _ in lines]
    assert "reply" in kinds and "match" in kinds and "beat" in kinds
    for kind, body in lines:
        obj = json.loads(body)
        if kind == "reply":
            assert obj["ok"] and obj["pong"]
        else:
            assert not P.validate_message(kind, obj)


def test_silence_is_reported_as_silence_and_oversized_subscriptions_are_cut(tmp_path, server_assets):
    """Ten seconds of digital silence through --input: every match is empty with signal false,
    every beat has no tempo, no forecast and confidence 0, status says signal false. A subscriber
    that subscribes to everything and also sends a 16-KiB subscription prefix is disconnected by
    PUB's size limit (each reconnect resends it), so it gets nothing while the server keeps
    publishing to the others. (A far longer prefix would crash the *client's* own libzmq: its
    subscription trie is freed recursively.)"""
    import soundfile as sf

    wav = tmp_path / "silence.wav"
    sf.write(str(wav), np.zeros(16000 * 10, dtype=np.float32), 16000)
    pub, ctl = addrs()
    p = start_server(["--model", str(server_assets.model), "--library", str(server_assets.library), "--input",
                      str(wav), "--speed", "2", "--instruments", "electric bass,drum kit", "--pub", pub, "--ctl", ctl,
                      "--threads", "1"])
    ctx = zmq.Context()
    try:
        wait_ready(ctx, ctl, p)
        sub = Subscriber(ctx, pub)
        hostile = ctx.socket(zmq.SUB)
        hostile.setsockopt(zmq.SUBSCRIBE, b"")
        hostile.setsockopt(zmq.SUBSCRIBE, b"m" + b"x" * (16 << 10))
        hostile.connect(pub)
        sub.poll(4.0, until=lambda t, m: t == "beat" and m["hop"] > 20)
        matches = [m for m in sub.of("match") if m["ready"]]
        beats = sub.of("beat")
        assert matches and beats
        for m in matches:
            assert not P.validate_message("match", m)
            assert m["signal"] is False and all(v == [] for v in m["matches"].values()) and m["level_db"] < -100
        for b in beats:
            assert not P.validate_message("beat", b)
            assert b["signal"] is False and b["tempo"] is None and b["next_beats"] == [] and b["confidence"] == 0.0
            assert b["beats_in_hop"] == []
        st = request(ctx, ctl, {"cmd": "status"}, timeout_s=10)["status"]
        assert st["signal"] is False and st["level_db"] < -100
        assert "nonfinite" in st["counters"] and "restarts" in st["counters"]
        got = 0
        while hostile.poll(0):
            hostile.recv_multipart()
            got += 1
        assert len(sub.msgs) > 20 and got <= 2, (len(sub.msgs), got)
        hostile.close(0)
    finally:
        stop(p)
        ctx.destroy(linger=0)
