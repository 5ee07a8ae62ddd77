"""Server protocol v1 over inproc:// with the fake matcher: schema, seq, drops, control, fuzz."""
import itertools
import json
import time

import numpy as np
import pytest
import zmq

from server import config, protocol as P
from server.app import ConfigError, Server, is_local_address
from server.capture import FileSource
from server.fake import FakeLibrary, FakeMatcher
from server.testing import Subscriber, request, seq_gaps, write_click_track

_ids = itertools.count()


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def make_server(tmp_path, ctx, *, speed=0.0, seconds=4.0, work_s=0.0, loop=False, sr=16000, **kw):
    wav = tmp_path / f"click{sr}.wav"
    if not wav.exists():
        write_click_track(wav, seconds, sr=sr)
    n = next(_ids)
    src = FileSource(wav, speed=speed, loop=loop)
    m = FakeMatcher(instruments=["drums", "fretless bass"], k=3, work_s=work_s)
    opts = dict(backend_name="fake", pub_addr=f"inproc://pub{n}", ctl_addr=f"inproc://ctl{n}", context=ctx,
                library_loader=lambda p: FakeLibrary(path=p), status_period=0.25, instruments=["drums", "fretless bass"],
                k=3, library_path="<fake>")
    opts.update(kw)
    return Server(m, src, **opts)


def finished(topic, msg):
    return topic == "status" and msg["state"] == "finished"


def test_every_message_valid_and_seq_contiguous(tmp_path, ctx):
    srv = make_server(tmp_path, ctx, speed=0.0, seconds=4.0)
    srv.start(start_source=False)
    sub = Subscriber(ctx, srv.pub_addr)
    time.sleep(0.1)
    srv.source.start()
    try:
        sub.poll(20, until=finished)
    finally:
        srv.close()
    assert not sub.errors, sub.errors[:5]
    matches, beats, status = sub.of("match"), sub.of("beat"), sub.of("status")
    assert status and status[-1]["state"] == "finished"
    # speed 0: every hop processed, none dropped; 4 s / 160 ms = 25 hops
    assert len(matches) == len(beats) == 25
    for topic_msgs in (matches, beats):
        assert [m["seq"] for m in topic_msgs] == list(range(len(topic_msgs)))
    assert seq_gaps(status) == 0  # the first status may precede the subscription
    assert [m["hop"] for m in matches] == list(range(25))
    assert status[-1]["counters"]["drops"] == 0
    assert status[-1]["counters"]["published"]["match"] == 25
    for m in matches:
        assert m["instruments"] == ["drums", "fretless bass"]
        assert all(len(m["matches"][i]) == 3 for i in m["instruments"])
        assert m["stream_time"] == pytest.approx((m["hop"] + 1) * 0.16, abs=1e-6)
        assert m["latency_ms"] >= 0


def test_late_hops_dropped_and_counted(tmp_path, ctx):
    """A worker slower than the hop drops hops (latest wins); hop gaps == published drops."""
    srv = make_server(tmp_path, ctx, speed=1.0, seconds=3.0, work_s=0.3)
    srv.start(start_source=False)
    sub = Subscriber(ctx, srv.pub_addr)
    time.sleep(0.1)
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
    assert seq_gaps(matches) == 0  # seq itself never gaps on a healthy connection
    # latency stays bounded: hops are dropped, never queued
    lat = [m["latency_ms"] for m in matches]
    assert max(lat) < 1000, lat


def test_latency_small_with_16k_input(tmp_path, ctx):
    srv = make_server(tmp_path, ctx, speed=1.0, seconds=2.0)
    srv.start(start_source=False)
    sub = Subscriber(ctx, srv.pub_addr, topics=("beat",))
    time.sleep(0.05)
    srv.source.start()
    try:
        sub.poll(5, until=lambda t, m: m["hop"] >= 10)
    finally:
        srv.close()
    lat = np.array([m["latency_ms"] for m in sub.of("beat")])
    assert lat.size >= 8
    # fake matcher does no work: latency = worker wake-up + publish (16 kHz: no resampler delay)
    assert np.median(lat) < 20, lat


def test_resampled_input(tmp_path, ctx):
    """44.1 kHz input goes through the streaming resampler; stream times stay on the 16 kHz grid."""
    srv = make_server(tmp_path, ctx, speed=0.0, seconds=2.0, sr=44100)
    srv.start(start_source=False)
    sub = Subscriber(ctx, srv.pub_addr)
    time.sleep(0.05)
    srv.source.start()
    try:
        sub.poll(10, until=finished)
    finally:
        srv.close()
    assert not sub.errors
    assert len(sub.of("match")) == 12  # 2 s / 0.16 = 12.5 -> 12 complete hops


# ---------------------------------------------------------------------------- control
@pytest.fixture
def live(tmp_path, ctx):
    srv = make_server(tmp_path, ctx, speed=1.0, seconds=4.0, loop=True)
    srv.start()
    yield srv
    srv.close()


def req(srv, ctx, obj=None, raw=None):
    r = request(ctx, srv.ctl_addr, obj, raw=raw)
    assert not P.validate_reply(r), (r, P.validate_reply(r))
    return r


def test_control_commands_answered_and_obeyed(live, ctx):
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
    sub.poll(3, until=lambda t, m: t == "match" and m["instruments"][0] == "warm pad" and len(sub.of("match")) > 1)
    m = sub.of("match")[-1]
    assert m["instruments"] == ["warm pad", "kick drum", "upright bass"]
    assert all(len(v) == 2 for v in m["matches"].values())

    r = req(srv, ctx, {"cmd": "set_hop", "ms": 320})
    assert r["ok"] and r["ms"] == 320
    sub.msgs.clear()
    sub.poll(3, until=lambda t, m: len(sub.of("match")) >= 3)
    st = [m["stream_time"] for m in sub.of("match")]
    assert np.allclose(np.diff(st), 0.32, atol=1e-6), st
    req(srv, ctx, {"cmd": "set_hop", "ms": 160})

    r = req(srv, ctx, {"cmd": "restrict_category", "enabled": True})
    assert r["ok"] and srv.matcher.restrict_category is True

    r = req(srv, ctx, {"cmd": "set_library", "path": "/nonexistent/lib.npz"})
    assert not r["ok"] and r["error"]["code"] == "not_found"
    r = req(srv, ctx, {"cmd": "set_library", "path": __file__})
    assert r["ok"] and srv.library_path == __file__
    assert req(srv, ctx, {"cmd": "status"})["status"]["library"]["path"] == __file__

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
    (b'{"cmd": "set_hop", "ms": NaN}', "bad_args"),
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
def test_vanishing_and_stalled_subscribers_do_not_block(tmp_path, ctx):
    srv = make_server(tmp_path, ctx, speed=1.0, seconds=4.0, loop=True,
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


def test_non_loopback_without_keys_refused(tmp_path, ctx):
    with pytest.raises(ConfigError, match="CURVE"):
        make_server(tmp_path, ctx, pub_addr="tcp://0.0.0.0:*")
    with pytest.raises(ConfigError, match="CURVE"):
        make_server(tmp_path, ctx, ctl_addr="tcp://*:5599")
    with pytest.raises(ConfigError, match="server.keys"):
        make_server(tmp_path, ctx, pub_addr="tcp://0.0.0.0:*", curve_keys=tmp_path / "nokeys")


def test_curve_keys_encrypt_and_authenticate(tmp_path, ctx):
    from server.keys import generate, load_client

    generate(tmp_path / "keys")
    srv = make_server(tmp_path, ctx, speed=1.0, loop=True, pub_addr="tcp://127.0.0.1:*",
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
        for s in (good, plain, bad):
            s.close()
    finally:
        srv.close()
