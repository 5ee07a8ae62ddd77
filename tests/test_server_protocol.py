"""Server protocol v1 over inproc:// and tcp loopback with the real engine: schema, seq, drops,
control, fuzz, CURVE.

Every server here runs ``engine.pipeline.Matcher`` on a real model directory (a freshly
initialised micro checkpoint exported with ``export``) and a real stem library, both built once
per session (``server_assets`` in conftest.py, tests/server_assets.py)."""
import itertools
import json
import time

import numpy as np
import pytest
import zmq

from server import config, protocol as P
from server.app import ConfigError, Server, is_local_address
from server.capture import FileSource
from server.testing import Subscriber, request, seq_gaps, write_click_track
from conftest import wait_until

_ids = itertools.count()
INSTRUMENTS = ["drums", "fretless bass"]


@pytest.fixture(scope="module")
def engine(server_assets):
    """(backend, library loader) shared by the module's servers: one ONNX Runtime backend."""
    from engine.library import StemLibrary

    backend = server_assets.backend()
    fp = backend.manifest.fingerprint
    return backend, (lambda p: StemLibrary.load(p, expect_fingerprint=fp))


def make_matcher(engine, server_assets, **kw):
    from engine.pipeline import Matcher

    backend, loader = engine
    return Matcher(backend, loader(str(server_assets.library)), instruments=INSTRUMENTS, k=3, hop_ms=160,
                   window_s=config.DEFAULT_WINDOW_S, **kw)


def make_server(tmp_path, ctx, engine, server_assets, *, speed=0.0, seconds=4.0, loop=False, sr=16000, **kw):
    wav = tmp_path / f"click{sr}_{seconds:g}.wav"
    if not wav.exists():
        write_click_track(wav, seconds, sr=sr)
    n = next(_ids)
    src = FileSource(wav, speed=speed, loop=loop)
    m = make_matcher(engine, server_assets)
    opts = dict(backend_name=engine[0].name, pub_addr=f"inproc://pub{n}", ctl_addr=f"inproc://ctl{n}", context=ctx,
                library_loader=engine[1], status_period=0.25, library_roots=[server_assets.library.parent],
                library_path=str(server_assets.library))
    opts.update(kw)
    return Server(m, src, **opts)


def finished(topic, msg):
    return topic == "status" and msg["state"] == "finished"


def hop_grid(n_samples, hop=2560, lead=240):
    """Hops the matcher cuts from ``n_samples`` (engine.pipeline: hop n ends at n*hop + lead)."""
    return (n_samples - lead) // hop


def test_every_message_valid_and_seq_contiguous(tmp_path, ctx, engine, server_assets):
    import soundfile as sf

    srv = make_server(tmp_path, ctx, engine, server_assets, speed=0.0, seconds=4.0)
    srv.start(start_source=False)
    sub = Subscriber(ctx, srv.pub_addr)
    wait_until(lambda: srv.subscriptions >= 3, 5, what="the server to hold the subscriber's 3 subscriptions")
    srv.source.start()
    try:
        sub.poll(20, until=finished)
    finally:
        srv.close()
    assert not sub.errors, sub.errors[:5]
    matches, beats, status = sub.of("match"), sub.of("beat"), sub.of("status")
    assert status and status[-1]["state"] == "finished"
    # speed 0: every hop processed, none dropped; 4 s -> (64000 - 240) // 2560 = 24 hops
    n = hop_grid(64000)
    assert n == 24 and len(matches) == n
    for topic_msgs in (matches, beats):
        assert [m["seq"] for m in topic_msgs] == list(range(len(topic_msgs)))
    assert seq_gaps(status) == 0  # the first status may precede the subscription
    assert [m["hop"] for m in matches] == list(range(n))
    assert status[-1]["counters"]["drops"] == 0 and status[-1]["counters"]["hop_errors"] == 0
    assert status[-1]["counters"]["published"]["match"] == n
    assert status[-1]["backend"] == "onnx-fp32" and status[-1]["library"]["stems"] == len(srv.matcher.library)
    # the window needs 1 s (112 frames = 7 hops of 16 frames) before the encoder runs
    ready = [m for m in matches if m["ready"]]
    assert [m["hop"] for m in matches if not m["ready"]] == list(range(6))
    assert len(ready) == n - 6
    # one beat message per ready hop, same hop numbers, beat sent before its match
    assert [b["hop"] for b in beats] == [m["hop"] for m in ready]
    for m in matches:
        assert m["instruments"] == INSTRUMENTS
        assert all(len(m["matches"].get(i, [])) == (3 if m["ready"] else 0) for i in m["instruments"])
        assert m["stream_time"] == pytest.approx((m["hop"] + 1) * 0.16 + 0.015, abs=1e-6)
        assert m["latency_ms"] >= 0
        if m["ready"]:
            assert set(m["timings_ms"]) >= {"encode", "predict", "search", "beat_head", "tracker", "total"}
    # the first ready hop carries the whole 1.12-s window's activation (56 values at 50 Hz), then 8 per hop
    assert [len(b["activation"]) for b in beats] == [56] + [8] * (len(beats) - 1)
    assert beats[0]["activation_time"] == pytest.approx(0.0175)  # frame 0: centre of log-mel frames 0-1
    for b in beats:  # the tracker's no-beat state (it has not locked yet) has no tempo
        if b["no_beat"]:
            assert b["tempo"] is None and b["phase"] is None and b["next_beats"] == [] and b["beats_in_hop"] == []
        else:
            assert b["tempo"] and 0 <= b["phase"] < 1 and b["period_s"] == pytest.approx(60 / b["tempo"])
    # the server publishes exactly what the engine computes on the same audio offline
    x, sr = sf.read(str(tmp_path / "click16000_4.wav"), dtype="float32")
    offline = [r for r in make_matcher(engine, server_assets).run_array(x) if r.ready]
    assert len(offline) == len(ready)
    for r, m, b in zip(offline, ready, beats):
        assert m["hop"] == r.hop_index
        for inst in INSTRUMENTS:
            assert [(it["track_id"], it["stem_id"], it["offset"]) for it in m["matches"][inst]] == \
                   [(x.track_id, x.stem_id, x.offset) for x in r.matches[inst]]
            assert np.allclose([it["score"] for it in m["matches"][inst]], [x.score for x in r.matches[inst]],
                               atol=1e-6)
        assert np.allclose(b["activation"], r.activation, atol=1e-5)
        assert b["no_beat"] == r.beat.no_beat
        if not r.beat.no_beat:
            assert b["tempo"] == pytest.approx(r.beat.tempo) and b["phase"] == pytest.approx(r.beat.phase)
            assert b["beats_in_hop"] == pytest.approx(list(r.beat.beats))


@pytest.mark.slow
def test_late_hops_dropped_and_counted(tmp_path, ctx, engine, server_assets):
    """A worker slower than the hop drops hops (latest wins); hop gaps == published drops. The
    worker is slowed by a 300 ms stall after each hop (the test hook ``on_hop`` runs in it)."""
    srv = make_server(tmp_path, ctx, engine, server_assets, speed=1.0, seconds=3.0)
    srv.on_hop = lambda res: time.sleep(0.3)
    srv.start(start_source=False)
    sub = Subscriber(ctx, srv.pub_addr)
    wait_until(lambda: srv.subscriptions >= 3, 5, what="the server to hold the subscriber's 3 subscriptions")
    srv.source.start()
    try:
        sub.poll(15, until=finished)
    finally:
        srv.close()
    assert not sub.errors
    matches = sub.of("match")
    final = sub.of("status")[-1]
    assert final["state"] == "finished"
    hops = [m["hop"] for m in matches]
    gaps = sum(b - a - 1 for a, b in zip(hops, hops[1:]))
    drops = final["counters"]["drops"]
    assert drops > 0, "a 300 ms hop every 160 ms must drop"
    assert gaps + hops[0] == drops  # every missing hop is a counted drop
    assert hops[-1] == hop_grid(48000) - 1  # the last hop of the file is never dropped
    assert seq_gaps(matches) == 0  # seq itself never gaps on a healthy connection
    # latency stays bounded: hops are dropped, never queued
    lat = [m["latency_ms"] for m in matches]
    assert max(lat) < 1000, lat


def test_latency_small_with_16k_input(tmp_path, ctx, engine, server_assets):
    srv = make_server(tmp_path, ctx, engine, server_assets, speed=1.0, seconds=2.0)
    srv.start(start_source=False)
    sub = Subscriber(ctx, srv.pub_addr, topics=("beat", "match"))
    wait_until(lambda: srv.subscriptions >= 2, 5, what="the server to hold the subscriber's 2 subscriptions")
    srv.source.start()
    try:
        sub.poll(5, until=lambda t, m: t == "beat" and m["hop"] >= 10)
    finally:
        srv.close()
    lat = np.array([m["latency_ms"] for m in sub.of("beat")])
    assert lat.size >= 4
    # latency = worker wake-up + the hop's engine time + publish (16 kHz: no resampler delay)
    ready = [m for m in sub.of("match") if m["ready"]]
    overhead = np.array([m["latency_ms"] - m["timings_ms"]["total"] for m in ready])
    assert np.median(overhead) < 20, overhead
    assert np.median(lat) < 50, lat


def test_resampled_input(tmp_path, ctx, engine, server_assets):
    """44.1 kHz input goes through the streaming resampler; stream times stay on the 16 kHz grid."""
    srv = make_server(tmp_path, ctx, engine, server_assets, speed=0.0, seconds=2.0, sr=44100)
    srv.start(start_source=False)
    sub = Subscriber(ctx, srv.pub_addr)
    wait_until(lambda: srv.subscriptions >= 3, 5, what="the server to hold the subscriber's 3 subscriptions")
    srv.source.start()
    try:
        sub.poll(10, until=finished)
    finally:
        srv.close()
    assert not sub.errors
    matches = sub.of("match")
    assert len(matches) == hop_grid(32000) == 12  # 2 s: (32000 - 240) // 2560
    assert [m["stream_time"] for m in matches] == pytest.approx([(i + 1) * 0.16 + 0.015 for i in range(12)])
    assert sum(m["ready"] for m in matches) == 6 and len(sub.of("beat")) == 6


# ---------------------------------------------------------------------------- control
@pytest.fixture
def live(tmp_path, ctx, engine, server_assets):
    srv = make_server(tmp_path, ctx, engine, server_assets, speed=1.0, seconds=4.0, loop=True)
    srv.start()
    yield srv
    srv.close()


def req(srv, ctx, obj=None, raw=None):
    r = request(ctx, srv.ctl_addr, obj, raw=raw)
    assert not P.validate_reply(r), (r, P.validate_reply(r))
    return r


def test_control_commands_answered_and_obeyed(live, ctx, server_assets):
    srv = live
    sub = Subscriber(ctx, srv.pub_addr)
    r = req(srv, ctx, {"cmd": "ping", "id": 7})
    assert r["ok"] and r["pong"] and r["id"] == 7
    r = req(srv, ctx, {"cmd": "help"})
    assert set(r["commands"]) >= {"ping", "status", "set_instruments", "set_k", "set_library", "set_hop", "pause", "resume"}
    r = req(srv, ctx, {"cmd": "status"})
    assert r["ok"] and not P.validate_message("status", r["status"])

    r = req(srv, ctx, {"cmd": "set_instruments", "instruments": ["warm pad", "kick drum", "upright bass"]})
    assert r["ok"] and r["instruments"] == ["warm pad", "kick drum", "upright bass"]
    assert req(srv, ctx, {"cmd": "get_instruments"})["instruments"] == ["warm pad", "kick drum", "upright bass"]
    r = req(srv, ctx, {"cmd": "set_k", "k": 2})
    assert r["ok"] and r["k"] == 2 and req(srv, ctx, {"cmd": "get_k"})["k"] == 2
    sub.msgs.clear()
    sub.poll(3, until=lambda t, m: t == "match" and m["ready"] and m["instruments"][0] == "warm pad"
             and len(sub.of("match")) > 1)
    m = sub.of("match")[-1]
    assert m["ready"] and m["instruments"] == ["warm pad", "kick drum", "upright bass"]
    assert all(len(v) == 2 for v in m["matches"].values())
    # a name the model cannot condition on (no text encoder, not in its cache) is refused, not applied
    r = req(srv, ctx, {"cmd": "set_instruments", "instruments": ["theremin"]})
    assert not r["ok"] and r["error"]["code"] == "bad_args" and "theremin" in r["error"]["message"]
    assert req(srv, ctx, {"cmd": "get_instruments"})["instruments"] == ["warm pad", "kick drum", "upright bass"]

    r = req(srv, ctx, {"cmd": "set_hop", "ms": 320})
    assert r["ok"] and r["ms"] == 320
    sub.msgs.clear()
    sub.poll(3, until=lambda t, m: len(sub.of("match")) >= 3)
    st = [m["stream_time"] for m in sub.of("match")]
    assert np.allclose(np.diff(st), 0.32, atol=1e-6), st
    r = req(srv, ctx, {"cmd": "set_hop", "ms": 150})
    assert r["ok"] and r["ms"] == 160  # the engine rounds to 20 ms

    # restrict_category: each instrument is searched among stems of its category only
    assert req(srv, ctx, {"cmd": "set_instruments", "instruments": ["drums", "electric bass"]})["ok"]
    assert req(srv, ctx, {"cmd": "set_k", "k": 5})["ok"]
    r = req(srv, ctx, {"cmd": "restrict_category", "enabled": True})
    assert r["ok"] and srv.matcher.restrict_category is True
    sub.msgs.clear()
    sub.poll(3, until=lambda t, m: t == "match" and m["ready"] and m["k"] == 5 and len(sub.of("match")) > 1)
    m = sub.of("match")[-1]
    assert m["ready"] and m["instruments"] == ["drums", "electric bass"]
    assert [it["category"] for it in m["matches"]["drums"]] == ["drums"] * 3  # 3 drum stems in the library
    assert [it["category"] for it in m["matches"]["electric bass"]] == ["bass"] * 3
    assert req(srv, ctx, {"cmd": "restrict_category", "enabled": False})["ok"]

    # set_ranking: the tempo + key descriptor's weight in the ranking; 0 is the model alone
    assert req(srv, ctx, {"cmd": "status"})["status"]["streaming"] is bool(srv.matcher.streaming)
    st = req(srv, ctx, {"cmd": "status"})["status"]["ranking"]
    assert st["mode"] == "model+keytempo" and 0 < st["keytempo_weight"] <= 1  # the library has descriptors
    r = req(srv, ctx, {"cmd": "set_ranking", "keytempo_weight": 0})
    assert r["ok"] and r["ranking"] == {"mode": "model", "keytempo_weight": 0.0}
    assert srv.matcher.keytempo_weight == 0.0
    for bad in (-0.1, 1.5, "0.5", None):
        r = req(srv, ctx, {"cmd": "set_ranking", "keytempo_weight": bad})
        assert not r["ok"] and r["error"]["code"] == "bad_args"
    assert req(srv, ctx, {"cmd": "status"})["status"]["ranking"]["keytempo_weight"] == 0.0
    assert req(srv, ctx, {"cmd": "set_ranking", "keytempo_weight": st["keytempo_weight"]})["ok"]
    sub.msgs.clear()
    sub.poll(3, until=lambda t, m: t == "match" and m["ready"] and len(sub.of("match")) > 1)
    assert all(len(v) == 5 for v in sub.of("match")[-1]["matches"].values())

    # set_library: a real index swaps in; a missing, unreadable, foreign or out-of-root one is
    # refused, and a path outside the roots gets the same answer whether or not it exists
    missing = req(srv, ctx, {"cmd": "set_library", "path": "/nonexistent/lib.npz"})
    assert not missing["ok"] and missing["error"]["code"] == "library_error"
    for path in (__file__, "/etc/passwd", "/etc", "/etc/nonexistent"):
        r = req(srv, ctx, {"cmd": "set_library", "path": path})
        assert not r["ok"] and r["error"]["code"] == "library_error"
        assert r["error"]["message"].replace(path, "P") == missing["error"]["message"].replace("/nonexistent/lib.npz", "P")
    r = req(srv, ctx, {"cmd": "set_library", "path": str(server_assets.other_model_library)})
    assert not r["ok"] and r["error"]["code"] == "library_error" and "another model" in r["error"]["message"]
    assert srv.library_path == str(server_assets.library)
    small = str(server_assets.library_small)
    r = req(srv, ctx, {"cmd": "set_library", "path": small})
    lib_small = srv.matcher.library
    assert r["ok"] and srv.library_path == small
    assert {k: r["library"][k] for k in ("path", "stems", "segments", "tracks")} == {
        "path": small, "stems": len(lib_small.stems), "segments": len(lib_small), "tracks": 2}
    assert req(srv, ctx, {"cmd": "status"})["status"]["library"]["path"] == small
    sub.msgs.clear()
    sub.poll(3, until=lambda t, m: t == "match" and m["ready"] and len(sub.of("match")) > 1)
    m = sub.of("match")[-1]
    assert {it["track_id"] for v in m["matches"].values() for it in v} <= {"track0", "track1"}
    assert all(len(v) == 5 for v in m["matches"].values())

    r = req(srv, ctx, {"cmd": "pause"})
    assert r["ok"] and r["state"] == "paused"
    time.sleep(0.3)
    sub.msgs.clear()
    sub.poll(0.6)
    assert not sub.of("match") and sub.of("status")[-1]["state"] == "paused"
    r = req(srv, ctx, {"cmd": "resume"})
    assert r["ok"] and r["state"] == "running"
    sub.msgs.clear()
    sub.poll(2, until=lambda t, m: t == "match")
    assert sub.of("match")
    hops0 = srv.status_dict()["counters"]["drops"]
    assert hops0 == 0, "a pause is not counted as dropped hops"

    r = req(srv, ctx, {"cmd": "reset"})
    assert r["ok"]
    r = req(srv, ctx, {"cmd": "set_midi", "note": 40})
    assert not r["ok"] and r["error"]["code"] == "unavailable"
    assert not sub.errors
    sub.close()


@pytest.mark.parametrize("raw,code", [
    (b"not json", "bad_json"),
    (b"\xff\xfe\x00garbage", "bad_json"),
    (b"[1,2,3]", "bad_request"),
    (b'"ping"', "bad_request"),
    (b"{}", "bad_request"),
    (b'{"cmd": 5}', "bad_request"),
    (b'{"cmd": "explode"}', "unknown_cmd"),
    (b'{"cmd": "set_k"}', "bad_args"),
    (b'{"cmd": "set_k", "k": "5"}', "bad_args"),
    (b'{"cmd": "set_k", "k": true}', "bad_args"),
    (b'{"cmd": "set_k", "k": 0}', "bad_args"),
    (b'{"cmd": "set_k", "k": 1e9}', "bad_args"),
    (b'{"cmd": "set_hop", "ms": NaN}', "bad_json"),  # NaN is not JSON
    (b'{"cmd": "set_hop", "ms": -5}', "bad_args"),
    (b'{"cmd": "set_instruments", "instruments": "drums"}', "bad_args"),
    (b'{"cmd": "set_instruments", "instruments": []}', "bad_args"),
    (b'{"cmd": "set_instruments", "instruments": [1, 2]}', "bad_args"),
    (b'{"cmd": "set_instruments", "instruments": ["  "]}', "bad_args"),
    (b'{"cmd": "set_library", "path": 3}', "bad_args"),
    (b'{"cmd": "restrict_category", "enabled": "yes"}', "bad_args"),
    (b"[" * 100000, "too_large"),
    (b'{"a":' * 5000 + b"1" + b"}" * 5000, "bad_json"),
])
def test_malformed_requests_get_error_replies(live, ctx, raw, code):
    r = req(live, ctx, raw=raw)
    assert r["ok"] is False and r["error"]["code"] == code, r
    assert req(live, ctx, {"cmd": "ping"})["ok"]


def test_wrong_frame_counts_and_dealer_clients(live, ctx):
    d = ctx.socket(zmq.DEALER)
    d.linger = 0
    d.connect(live.ctl_addr)
    try:
        d.send_multipart([b"", b'{"cmd":"ping"}', b"extra"])
        assert d.poll(3000)
        f = d.recv_multipart()
        assert f[0] == b"" and json.loads(f[1])["error"]["code"] == "bad_frames"
        d.send_multipart([b""])  # delimiter only, no body
        assert d.poll(3000)
        assert json.loads(d.recv_multipart()[1])["error"]["code"] == "bad_frames"
        d.send(b'{"cmd":"ping","id":"x"}')  # DEALER without delimiter
        assert d.poll(3000)
        r = json.loads(d.recv_multipart()[-1])
        assert r["ok"] and r["id"] == "x"
    finally:
        d.close(0)


def _random_value(rng, depth=0):
    k = rng.integers(0, 9 if depth < 3 else 6)
    if k == 0:
        return None
    if k == 1:
        return bool(rng.integers(2))
    if k == 2:
        return int(rng.integers(-10**6, 10**6))
    if k == 3:
        return float(rng.normal() * 10 ** rng.integers(0, 12))
    if k in (4, 5):
        return "".join(chr(int(c)) for c in rng.integers(32, 0x2FF, rng.integers(0, 20)))
    if k == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.integers(0, 5))]
    return {str(_random_value(rng, 3)): _random_value(rng, depth + 1) for _ in range(rng.integers(0, 5))}


def test_fuzz_control_never_crashes(live, ctx):
    rng = np.random.default_rng(42)
    cmds = list(Server.COMMANDS) + ["", "PING", "set_k ", "__init__", "_cmd_ping", "close", "stop"]
    argnames = ["instruments", "k", "ms", "path", "enabled", "channel", "note", "velocity", "id"]
    d = ctx.socket(zmq.DEALER)
    d.linger = 0
    d.connect(live.ctl_addr)
    sent = answered = 0
    try:
        for i in range(300):
            kind = rng.integers(0, 4)
            if kind == 0:  # binary garbage, random frame count
                body = [rng.bytes(int(rng.integers(0, 300))) for _ in range(int(rng.integers(0, 4)))]
            elif kind == 1:  # random JSON value
                body = [json.dumps(_random_value(rng)).encode()]
            else:  # plausible command with random arguments
                obj = {"cmd": cmds[rng.integers(len(cmds))]}
                for a in rng.choice(argnames, size=rng.integers(0, 4), replace=False):
                    obj[str(a)] = _random_value(rng)
                if obj["cmd"] == "pause":
                    obj["cmd"] = "resume"
                body = [json.dumps(obj).encode()]
            d.send_multipart([b""] + body)
            sent += 1
            if d.poll(2000):
                f = d.recv_multipart()
                r = json.loads(f[-1])
                assert not P.validate_reply(r), (body, r)
                answered += 1
    finally:
        d.close(0)
    assert answered == sent
    assert all(t.is_alive() for t in live._threads)
    r = req(live, ctx, {"cmd": "resume"})
    assert r["ok"]
    sub = Subscriber(ctx, live.pub_addr)
    sub.poll(3, until=lambda t, m: t == "match")
    assert sub.of("match") and not sub.errors
    sub.close()


def test_oversized_wire_message_disconnects_not_crashes(live, ctx):
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.connect(live.ctl_addr)
    s.send_multipart([b"", b"x" * (config.MAX_CTL_WIRE_BYTES + 10)])
    time.sleep(0.2)
    s.close(0)
    assert req(live, ctx, {"cmd": "ping"})["ok"]


# ---------------------------------------------------------------------------- sockets
@pytest.mark.slow
def test_vanishing_and_stalled_subscribers_do_not_block(tmp_path, ctx, engine, server_assets):
    srv = make_server(tmp_path, ctx, engine, server_assets, speed=1.0, seconds=4.0, loop=True,
                      pub_addr="tcp://127.0.0.1:*", ctl_addr="tcp://127.0.0.1:*")
    srv.start()
    try:
        # a subscriber that never reads, with tiny buffers, stays connected
        stalled = ctx.socket(zmq.SUB)
        stalled.rcvhwm = 1
        stalled.setsockopt(zmq.RCVBUF, 1024)
        stalled.subscribe(b"")
        stalled.connect(srv.pub_addr)
        # subscribers that connect and vanish abruptly
        for _ in range(5):
            v = ctx.socket(zmq.SUB)
            v.subscribe(b"")
            v.connect(srv.pub_addr)
            time.sleep(0.05)
            v.close(0)
        good = Subscriber(ctx, srv.pub_addr)
        good.poll(2.5)
        ms = good.of("match")
        assert len(ms) >= 12, len(ms)
        assert seq_gaps(ms) == 0
        assert np.median([m["latency_ms"] for m in ms]) < 50
        stalled.close(0)
        good.close()
    finally:
        t0 = time.monotonic()
        srv.close()
        assert time.monotonic() - t0 < 3


def test_loopback_detection():
    assert is_local_address("tcp://127.0.0.1:5555")
    assert is_local_address("tcp://127.3.2.1:5555")
    assert is_local_address("tcp://localhost:5555")
    assert is_local_address("tcp://[::1]:5555")
    assert is_local_address("inproc://x") and is_local_address("ipc:///tmp/x")
    for a in ("tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://192.168.1.2:5555", "tcp://eth0:5555",
              "tcp://example.com:5555", "udp://127.0.0.1:5"):
        assert not is_local_address(a), a


def test_non_loopback_without_keys_refused(tmp_path, ctx, engine, server_assets):
    with pytest.raises(ConfigError, match="CURVE"):
        make_server(tmp_path, ctx, engine, server_assets, pub_addr="tcp://0.0.0.0:*")
    with pytest.raises(ConfigError, match="CURVE"):
        make_server(tmp_path, ctx, engine, server_assets, ctl_addr="tcp://*:5599")
    with pytest.raises(ConfigError, match="server.keys"):
        make_server(tmp_path, ctx, engine, server_assets, pub_addr="tcp://0.0.0.0:*", curve_keys=tmp_path / "nokeys")


def test_match_and_beat_messages_from_a_hop_result(tmp_path, ctx, engine, server_assets):
    """The messages are built from engine's own HopResult, Match and BeatState: out-of-range and
    non-finite values are bounded or dropped, and a hop without signal reports no tempo."""
    import dataclasses

    from engine.beats import BeatState
    from engine.library import Match
    from engine.pipeline import HopResult

    srv = make_server(tmp_path, ctx, engine, server_assets)
    beat = BeatState(time=1.0, tempo=120.0, phase=1.25, last_beat=0.9, next_beats=np.array([1.4, np.nan]),
                     confidence=1.5, beats=[0.9])
    hit = Match("nowhere/drums", "nowhere", "drums", "drums", -1.0, float("nan"))
    res = HopResult(1.0, 16000, 5, True, 96, {"drums": [hit]}, beat, np.array([2.0, -1.0, np.nan], np.float32), 0.5,
                    {"total": 3.0}, {"hops": 6}, level_db=-300.0, hop_level_db=-20.0, signal=True)
    srv.cues.plan(res, 1.0, None, 1.0, None)  # the hop handler plans the live bars first
    b = srv._beat_msg(res, 1.0, 5, None)
    m = srv._match_msg(res, 1.0, 5, None, {"total": 3.0}, 3)
    # the detected beat at 0.9 s is live beat 0; the forecast one at 1.4 s (one period on) is 1
    assert (b["next_beats"], b["next_beats_number"], b["live_meter"]) == ([1.4], [1], 4)
    for topic, msg in (("beat", b), ("match", m)):
        msg["wall_time"] = msg.pop("_arrival")  # what _publish stamps
        assert not P.validate_message(topic, msg), (topic, P.validate_message(topic, msg))
    assert (b["tempo"], b["phase"], b["period_s"], b["confidence"]) == (120.0, 0.25, 0.5, 1.0)
    assert b["next_beats"] == [1.4] and b["beats_in_hop"] == [0.9] and b["activation"] == [1.0, 0.0, 0.0]
    assert b["level_db"] == -20.0 and b["last_beat"] == 0.9 and b["activation_time"] == 0.5
    item = m["matches"]["drums"][0]
    assert (item["rank"], item["stem_id"], item["offset"], item["score"], item["cue"]) == (1, "nowhere/drums", 0.0, 0.0, None)
    assert (m["level_db"], m["k"], m["instruments"], m["hop"]) == (-200.0, 3, ["drums"], 5)
    quiet = srv._beat_msg(dataclasses.replace(res, signal=False), 1.0, 5, None)
    assert (quiet["tempo"], quiet["phase"], quiet["next_beats"], quiet["beats_in_hop"], quiet["confidence"]) == \
           (None, None, [], [], 0.0)
    assert srv._beat_msg(dataclasses.replace(res, beat=None), 1.0, 5, None) is None
    srv.close()


def test_startup_line_shows_the_matchers_settings_not_the_command_lines(tmp_path, ctx, engine, server_assets):
    """The matcher owns instruments, k and hop. The start-up line showed the command line's copy
    of the names (a repeat and a double space kept) and of k; it now reads the server, which
    reads the matcher."""
    from engine.pipeline import Matcher
    from server.__main__ import parse_args, started_line

    a = parse_args(["--instruments", "drums, fretless   bass,drums", "--k", "4", "--hop", "150"])
    assert a.instrument_list == ["drums", "fretless   bass", "drums"]
    m = Matcher(engine[0], engine[1](str(server_assets.library)), instruments=a.instrument_list, k=a.k,
                hop_ms=a.hop, window_s=config.DEFAULT_WINDOW_S)
    write_click_track(tmp_path / "click.wav", 1.0)
    srv = Server(m, FileSource(tmp_path / "click.wav"), backend_name=engine[0].name, context=ctx)
    m.set_k(2)  # a later change lands in the line too: there is no copy to go stale
    line = started_line(srv, a)
    assert "instruments ['drums', 'fretless bass'], k=2, hop 160 ms (asked 150 ms, rounded to 20-ms steps)" in line
    assert line.startswith(f"backend {engine[0].name} on cpu; publishing on {a.pub}, control on {a.ctl};")
    srv.close()


def test_curve_keys_encrypt_and_authenticate(tmp_path, ctx, engine, server_assets):
    from server.keys import generate, load_client

    generate(tmp_path / "keys")
    srv = make_server(tmp_path, ctx, engine, server_assets, speed=1.0, loop=True, pub_addr="tcp://127.0.0.1:*",
                      ctl_addr="tcp://127.0.0.1:*", curve_keys=tmp_path / "keys")
    srv.start()
    try:
        opts = load_client(tmp_path / "keys")
        good = Subscriber(ctx, srv.pub_addr, **opts)
        plain = Subscriber(ctx, srv.pub_addr)
        good.poll(1.5)
        plain.poll(0.3)
        assert good.of("match") and not plain.msgs
        r = ctx.socket(zmq.REQ)
        r.linger = 0
        for k, v in opts.items():
            setattr(r, k, v)
        r.connect(srv.ctl_addr)
        assert request(ctx, None, {"cmd": "ping"}, sock=r)["ok"]
        r.close(0)
        # a client whose key is not authorised is rejected
        pk, sk = zmq.curve_keypair()
        bad = Subscriber(ctx, srv.pub_addr, curve_serverkey=opts["curve_serverkey"], curve_publickey=pk,
                         curve_secretkey=sk)
        bad.poll(0.5)
        assert not bad.msgs
        # each refused handshake is counted (and logged at WARNING by the control thread)
        wait_until(lambda: srv.status_dict()["counters"]["curve_denied"] >= 1, 2.0, interval=0.05)
        for s in (good, plain, bad):
            s.close()
    finally:
        srv.close()
