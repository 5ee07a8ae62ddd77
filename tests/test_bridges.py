"""Issue 16, items 3 and 4: the OSC and Ableton Link bridges of ``python -m server`` (server/bridge.py,
server/osc.py, server/link.py), each driven by the real server replaying the demo and received by a
real peer on this machine: a python-osc UDP server, an aalink Link peer."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from server import config
from server.bridge import BeatClock, Scheduler, parse_hostport
from server.testing import Subscriber
from conftest import wait_until

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")


def _free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*extra, speed="1"):
    pub, ctl = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    p = subprocess.Popen([sys.executable, "-m", "server", "--input", str(config.DEMO_TRACK), "--speed", speed,
                          "--pub", pub, "--ctl", ctl, *extra], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    return p, pub


def stop_server(p):
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=30)
    return out


def run_demo(*extra, until, topics=("match", "beat", "status"), cleanup=()):
    """The server replaying the demo with ``extra`` options, a Subscriber polling until
    ``until(topic, msg)``; returns the subscriber (closed) after a clean stop. ``cleanup``:
    callables run after the server stopped (peers, OSC servers)."""
    p, pub = start_server(*extra)
    ctx = zmq.Context()
    sub = Subscriber(ctx, pub, topics=topics)
    try:
        sub.poll(90, until=until)
    finally:
        out = stop_server(p)
        sub.close()
        ctx.term()
        for fn in cleanup:
            fn()
    assert p.returncode == 0, out[-2000:]
    assert not sub.errors, sub.errors[:3]
    sub.output = out
    return sub


def test_scheduler_fires_on_time_and_replaces_by_key():
    s = Scheduler()
    fired = []
    try:
        t0 = time.time()
        for i, dt in enumerate((0.30, 0.10, 0.20)):
            s.at(t0 + dt, lambda i=i, dt=dt: fired.append((i, time.time() - (t0 + dt))))
        s.at(t0 + 0.15, lambda: fired.append(("old", 0)), key="k")
        s.at(t0 + 0.25, lambda: fired.append(("new", time.time() - (t0 + 0.25))), key="k")
        s.at(t0 + 0.05, lambda: fired.append(("cancelled", 0)), key="c")
        s.cancel("c")
        time.sleep(0.45)
    finally:
        s.stop()
    assert [f[0] for f in fired] == [1, 2, "new", 0]
    late = sorted(late for _, late in fired)
    # never early; on time on an idle machine (a loaded 2-core one can delay a thread by tens of ms)
    assert late[0] >= 0 and late[len(late) // 2] < 0.005 and late[-1] < 0.060, fired


def test_beat_clock_numbers_beats_like_the_cues():
    s = Scheduler()
    got = []
    try:
        clock = BeatClock(s, lambda n, w, t, tempo: got.append((n, w, t)))
        clock.on_match({"matches": {"drums": [{"cue": {"stream_time": 10.0, "beat": 8}}]}})
        now = time.time()
        for k in range(3):  # three forecasts of the same beat, re-estimated: it fires once, at the latest
            clock.on_beat_msg({"signal": True, "tempo": 120.0, "next_beats": [11.0 + 0.001 * k, 11.5],
                               "next_beats_wall": [now + 0.2 + 0.001 * k, now + 0.7]})
        time.sleep(0.35)
    finally:
        s.stop()
    assert len(got) == 1 and got[0][0] == 10 and got[0][1] == pytest.approx(now + 0.202)



def test_beat_clock_ticks_the_servers_numbers_through_an_octave_change():
    """With ``next_beats_number`` the ticks carry the server's numbers: a number ticks once, and
    the first beat after a drop to half tempo, closer to the last tick than half the new period,
    still ticks."""
    s = Scheduler()
    got = []
    try:
        clock = BeatClock(s, lambda n, w, t, tempo: got.append((n, w)))
        now = time.time()
        clock.on_beat_msg({"signal": True, "tempo": 120.0, "next_beats": [1.0, 1.5], "next_beats_number": [4, 5],
                           "next_beats_wall": [now + 0.1, now + 0.6]})
        time.sleep(0.2)
        clock.on_beat_msg({"signal": True, "tempo": 60.0, "next_beats": [1.0, 1.3, 2.3], "next_beats_number": [4, 5, 6],
                           "next_beats_wall": [now + 0.1, now + 0.4, now + 1.4]})  # 4 has ticked: 5 is next
        time.sleep(0.35)
        clock.on_beat_msg({"signal": True, "tempo": 60.0, "next_beats": [1.3, 2.3], "next_beats_number": [5, 6],
                           "next_beats_wall": [now + 0.4, now + 1.4]})  # 5 has ticked: nothing before 6
        time.sleep(0.1)
    finally:
        s.stop()
    assert [n for n, _ in got] == [4, 5], got
    assert got[1][1] == pytest.approx(now + 0.4)


def test_cue_watcher_plays_at_the_forecast_of_its_own_beat_number():
    """A pending play follows the beat message's forecast of its cue's number (the tick of that
    number comes from the same forecast), not the forecast nearest in time; a match message that
    announces another number while the play is still far off (the numbering moved) replaces it."""
    from server.bridge import CueWatcher

    s = Scheduler()
    played = []
    try:
        cw = CueWatcher(s, lambda inst, it: played.append((it["cue"]["beat"], time.time())))
        now = time.time()
        item = lambda beat, wall: {"stem_id": "a", "offset": 0.0, "file": "a.wav",  # noqa: E731
                                   "cue": {"beat": beat, "wall_time": wall, "stream_time": 0.0, "stem_pos": 0.0}}
        cw.on_match({"signal": True, "matches": {"drums": [item(8, now + 0.5)]}})
        cw.on_beat_msg({"signal": True, "tempo": 120.0, "next_beats_wall": [now + 0.45, now + 0.7],
                        "next_beats_number": [7, 8]})
        assert s.pending(("play", "drums")) == pytest.approx(now + 0.7)  # beat 8's forecast, not the nearer 7
        cw.on_match({"signal": True, "matches": {"drums": [item(12, now + 0.9)]}})  # renumbered, 0.7 s off
        assert s.pending(("play", "drums")) == pytest.approx(now + 0.9) and cw.beat["drums"] == 12
        time.sleep(1.0)
    finally:
        s.stop()
    assert [b for b, _ in played] == [12]


def test_osc_sends_the_bar_and_no_beat_over_an_inproc_bridge():
    """OscSink behind a Bridge on ``inproc://``, received by a python-osc server: ``/stemjepa/beat``
    carries no_beat, meter, beat in bar and the next downbeat (tempo 0 and -1s in the no-beat
    state), ``/stemjepa/status`` signal and no_beat, and ``/stemjepa/tick`` counts in the
    tracker's 3/4 bar (beat 7, one after the cue's downbeat 6, is beat 1 of its bar, not 3)."""
    pytest.importorskip("pythonosc")
    from pythonosc.dispatcher import Dispatcher
    from pythonosc.osc_server import ThreadingOSCUDPServer

    from server.bridge import Bridge
    from server.osc import ADDRESSES, OscSink

    got = []
    disp = Dispatcher()
    disp.set_default_handler(lambda addr, *args: got.append((addr, args)))
    osc = ThreadingOSCUDPServer(("127.0.0.1", 0), disp)
    threading.Thread(target=osc.serve_forever, daemon=True).start()
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    pub.bind("inproc://osc-bars")
    sched = Scheduler()
    bridge = Bridge("inproc://osc-bars", [OscSink("127.0.0.1", osc.server_address[1], sched)], context=ctx).start()
    try:
        now, head = time.time(), {"v": 1, "latency_ms": 5.0, "wall_time": time.time()}
        item = {"rank": 1, "stem_id": "s/drums", "score": 0.5, "file": "", "offset": 0.0, "length": 8.0,
                "stem_tempo": None, "stretch": None,
                "cue": {"stem_pos": 0.0, "stream_time": 10.0, "wall_time": now - 0.3, "beat": 6}}
        msgs = [("beat", {**head, "seq": 0, "stream_time": 9.0, "tempo": None, "phase": None, "confidence": 0.01,
                          "signal": True, "no_beat": True, "meter": 4, "beat_in_bar": None, "next_beats": [],
                          "next_beats_wall": [], "next_downbeat_wall": None}),
                ("status", {**head, "seq": 0, "stream_time": 9.0, "state": "running", "signal": True,
                            "no_beat": True, "counters": {"hops": 9, "drops": 0}, "latency": {"p50": 5.0},
                            "level_db": -30.0, "library": {}}),
                ("match", {**head, "seq": 1, "stream_time": 9.8, "signal": True, "level_db": -20.0,
                           "matches": {"drums": [item]}}),
                ("beat", {**head, "seq": 1, "stream_time": 9.9, "tempo": 120.0, "phase": 0.8, "confidence": 0.9,
                          "signal": True, "no_beat": False, "meter": 3, "beat_in_bar": 0, "bar_confidence": 0.9,
                          "next_beats": [10.5],
                          "next_beats_wall": [now + 0.3], "next_downbeat_wall": now + 1.3})]
        time.sleep(0.2)  # the bridge's subscription reaches the PUB socket
        for topic, m in msgs:
            pub.send_multipart([topic.encode(), json.dumps({**m, "topic": topic}).encode()])
        wait_until(lambda: any(a == "/stemjepa/tick" for a, _ in got), 5, what="the scheduled tick")
        time.sleep(0.1)
    finally:
        bridge.stop()
        sched.stop()
        pub.close(0)
        osc.shutdown()
    for a, args in got:
        assert len(args) == len(ADDRESSES[a][0]), (a, args)
    beats = [args for a, args in got if a == "/stemjepa/beat"]
    assert beats[0][0] == 0.0 and beats[0][7:10] == (1, 4, -1) and beats[0][10] == -1.0
    assert beats[1][7:10] == (0, 3, 0) and 1.0 < beats[1][10] < 1.31
    status = [args for a, args in got if a == "/stemjepa/status"]
    assert status and status[0][-2:] == (1, 1)
    ticks = [args for a, args in got if a == "/stemjepa/tick"]
    assert ticks[0][0] == 7 and ticks[0][1] == 1 and ticks[0][4] == 3, ticks

def test_bad_bridge_options_are_refused_clearly(tmp_path, server_assets):
    for bad in ("9000", "localhost", "host:0", "host:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_hostport(bad)
    assert parse_hostport("127.0.0.1:9000") == ("127.0.0.1", 9000) and parse_hostport("[::1]:9") == ("::1", 9)
    r = subprocess.run([sys.executable, "-m", "server", *server_assets.cli_args(), "--input",
                        str(server_assets.dataset / "track0" / "mixture.wav"), "--osc", "nonsense",
                        "--pub", f"tcp://127.0.0.1:{_free_port()}", "--ctl", f"tcp://127.0.0.1:{_free_port()}"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "HOST:PORT" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


@pytest.mark.slow
def test_osc_bridge_sends_the_documented_address_space_on_time():
    from pythonosc.dispatcher import Dispatcher
    from pythonosc.osc_server import ThreadingOSCUDPServer

    from server.osc import ADDRESSES

    got = []
    disp = Dispatcher()
    disp.set_default_handler(lambda addr, *args: got.append((addr, args, time.time())))
    osc = ThreadingOSCUDPServer(("127.0.0.1", 0), disp)
    port = osc.server_address[1]
    th = threading.Thread(target=osc.serve_forever, daemon=True)
    th.start()
    sub = run_demo("--osc", f"127.0.0.1:{port}", until=lambda t, m: t == "match" and m["stream_time"] > 16.0,
                   cleanup=[osc.shutdown])
    addrs = {a for a, _, _ in got}
    assert addrs <= set(ADDRESSES), addrs - set(ADDRESSES)
    assert set(ADDRESSES) <= addrs, set(ADDRESSES) - addrs
    for a, args, _ in got:  # every message has the documented types
        types = ADDRESSES[a][0]
        assert len(args) == len(types), (a, args)
        for t, v in zip(types, args):
            assert isinstance(v, {"i": int, "f": float, "s": str}[t]), (a, args)
    # matches: the same items as the ZeroMQ stream, seq for seq
    zmatch = {m["seq"]: m for m in sub.of("match")}
    omatch = [args for a, args, _ in got if a == "/stemjepa/match"]
    assert omatch
    n_same = 0
    for args in omatch:
        inst, rank, stem_id, score, file, offset = args[:6]
        m = zmatch.get(args[-1])
        if m is None:
            continue
        it = m["matches"][inst][rank - 1]
        assert it["stem_id"] == stem_id and abs(it["score"] - score) < 1e-5 and it["file"] == file
        assert abs(args[-2] - m["stream_time"]) < 1e-3
        n_same += 1
    assert n_same >= 0.9 * len(omatch)
    # ticks at the live beats the server forecast (next_beats_wall), within 20 ms of arrival
    forecasts = np.array(sorted({w for m in sub.of("beat") for w in m["next_beats_wall"]}))
    ticks = [(args, t) for a, args, t in got if a == "/stemjepa/tick"]
    assert len(ticks) >= 8
    errs = np.array([np.min(np.abs(forecasts - t)) for _, t in ticks])
    assert np.median(errs) < 0.010 and np.percentile(errs, 90) < 0.020, errs
    # /stemjepa/play: at the cue of the item announced, on a downbeat, within 20 ms
    cues = {}
    for m in sub.of("match"):
        for inst, items in m["matches"].items():
            if items and items[0]["cue"]:
                c = items[0]["cue"]
                cues.setdefault((inst, items[0]["file"], round(c["stem_pos"], 4)), []).append(c)
    plays = [(args, t) for a, args, t in got if a == "/stemjepa/play"]
    assert plays
    for args, t in plays:
        inst, file, stem_pos, stretch, stem_id, beat = args
        announced = cues[(inst, file, round(stem_pos, 4))]  # the same cue, re-announced every hop until then
        assert any(c["beat"] == beat for c in announced), (args, t)
        # sent when the server last said that downbeat would come (its final forecast), within 20 ms
        assert np.min(np.abs(forecasts - t)) < 0.020, (args, t)
        # a downbeat: its number divides by the tracker's meter of the time (cues follow its bars)
        meters = {m["meter"] for m in sub.of("beat") for c in announced if abs(m["stream_time"] - c["stream_time"]) < 2}
        assert any(beat % mt == 0 for mt in meters) and Path(file).is_file(), (beat, meters)
        # the downbeat tick of that beat arrived with it
        assert any(a[0] == beat and a[1] == 0 and abs(tt - t) < 0.020 for a, tt in ticks), (beat, t, [(a, tt) for a, tt in ticks if abs(tt - t) < 3])


def _link_peer(tempo):
    """This test's own Link peer. Link has no session names: every peer on the network joins one
    session, so another Link app or test run nearby would steer these tests; they need the
    network to themselves and say so when it is not."""
    pytest.importorskip("aalink", reason="aalink (the link extra) is not installed")
    from server.link import LinkPeer

    peer = LinkPeer(tempo, quantum=4)
    time.sleep(1.5)  # discovery
    if peer.call(lambda link: int(link.num_peers)):
        peer.close()
        pytest.skip("another Ableton Link peer is active on this network; the two-peer test needs its own session")
    return peer


def _alone(peer_counts):
    if max(peer_counts, default=0) > 1:
        pytest.skip("a third Ableton Link peer joined during the test; its measurements are not the server's")


@pytest.mark.slow
def test_link_session_follows_the_tracker():
    """Two Link peers on this machine: the server (--link, follow) and this test's own peer,
    started at 120 BPM. The session must take the tracker's tempo, and its beats and bars must
    fall on the beats the server forecasts and on the cues' downbeats."""
    peer = _link_peer(120.0)
    samples = []  # (wall now, session beat now, session tempo, peers, beat message)

    def sample(t, m):
        if t == "beat" and m["stream_time"] > 10.0 and m["tempo"]:
            st = peer.call(lambda link: (time.time(), float(link.beat), float(link.tempo), int(link.num_peers)))
            samples.append((*st, m))
        return t == "match" and m["stream_time"] > 22.0

    sub = run_demo("--link", until=sample, cleanup=[peer.close])
    assert samples and max(s[3] for s in samples) >= 1, "the two peers never saw each other"
    _alone([s[3] for s in samples])
    late = samples[len(samples) // 2:]
    # tempo: the session's is the tracker's (the median of its last 16 hops: per hop it wobbles)
    tracked = np.median([s[4]["tempo"] for s in late])
    assert np.median([abs(s[2] / tracked - 1) for s in late]) < 0.02, (tracked, [s[2] for s in late[:5]])
    # phase: at each live beat -- the time the server last forecast for it before it came -- the
    # other peer's session is on a whole beat (read just after, extrapolated back; within 20 ms)
    period = 60.0 / tracked
    fc = sorted((w, now) for now, _, _, _, m in samples for w in m["next_beats_wall"][:1] if w > now)
    clusters = []  # forecasts of one beat by successive hops lie within a quarter beat of each other
    for w, now in fc:
        if clusters and w - clusters[-1][-1][0] < 0.25 * period:
            clusters[-1].append((w, now))
        else:
            clusters.append([(w, now)])
    errs = []
    for c in clusters:
        w = max(c, key=lambda x: x[1])[0]  # the forecast made last
        after = [s for s in samples if s[0] > w + 0.01]
        if after:
            now, beat, tempo = after[0][:3]
            b = beat - (now - w) * tempo / 60.0
            errs.append(abs(b - round(b)) * 60.0 / tempo)
    errs = np.array(errs)
    assert len(errs) >= 8
    print(f"Link follow: {len(errs)} beats, phase error median {1000 * np.median(errs):.1f} ms, "
          f"p90 {1000 * np.percentile(errs, 90):.1f} ms")
    # a forecast that moves after its beat has fired (the tracker revising itself) is missed: most, not all.
    # On the demo the shipped tracker revises 15-25 % of its beats' forecasts that late (5 runs of this
    # test: 75-85 % within 20 ms; docs/report/beats.md), so 0.8 failed about one run in three
    assert np.median(errs) < 0.010 and np.mean(errs < 0.020) >= 0.7, errs
    # bars: at a cue's downbeat the session is at the start of a bar (beat % quantum == 0)
    last_cue = {}  # live beat number -> the latest announcement of that downbeat
    for m in sub.of("match"):
        for items in m["matches"].values():
            c = items[0]["cue"] if items else None
            if c and m["stream_time"] > 10.0:
                last_cue[c["beat"]] = c
    cue_err = []
    for c in last_cue.values():
        after = [s for s in samples if s[0] > c["wall_time"] + 0.01]
        if after:
            now, beat, tempo = after[0][:3]
            b = beat - (now - c["wall_time"]) * tempo / 60.0
            cue_err.append(abs((b + 2) % 4 - 2) * 60.0 / tempo)
    assert cue_err and np.median(cue_err) < 0.020, cue_err[:10]


@pytest.mark.slow
def test_tracker_follows_the_link_session():
    """--link-mode lead: this test's peer sets the session to 188 BPM, twice the demo's ~94: the
    tracker reports the session's tempo octave instead of its own."""
    peer = _link_peer(188.0)
    samples = []  # (wall now, session beat now, session tempo)

    def sample(t, m):
        samples.append(peer.call(lambda link: (time.time(), float(link.beat), float(link.tempo), int(link.num_peers))))
        return m["stream_time"] > 16.0

    sub = run_demo("--link", "--link-mode", "lead", until=sample, topics=("beat", "match"), cleanup=[peer.close])
    assert "Link lead: tracker tempo range" in sub.output
    assert max(s[3] for s in samples) >= 1, "the two peers never saw each other"
    _alone([s[3] for s in samples])
    tempos = [m["tempo"] for m in sub.of("beat") if m["tempo"] and m["stream_time"] > 8.0]
    # the claim is the octave (188, not the demo's own ~94): within 7 %. At 50 fps the +-3 % range
    # holds two whole-frame beat intervals, 16 and 15 frames (187.5 and 200 BPM), and near the end
    # of the 16 s the beat network's wander takes the tracker to the 15 (up to 199.9 BPM); the
    # other octave is far from it
    assert tempos and all(abs(t / 188.0 - 1) < 0.07 for t in tempos), [round(t, 1) for t in tempos]
    # the cues' downbeats are the session's bar starts: at the cue's time the session is within
    # half a beat of a beat number divisible by 4 (the beat phase itself is the audio's). A cue
    # counts as a client would act on it: the latest announcement before its time. When the live
    # beats are renumbered onto the session's (near a tempo wander), a cue already announced is
    # withdrawn by the next message, which announces the corrected downbeat instead
    announced = []  # (message wall time, cue) in message order
    for m in sub.of("match"):
        cue = next((items[0]["cue"] for items in m["matches"].values() if items and items[0]["cue"]), None)
        if cue and m["stream_time"] > 10.0:
            announced.append((m["wall_time"], cue))
    bar_s = 4 * 60.0 / 188.0
    last_cue = {}
    for i, (_, c) in enumerate(announced):
        # withdrawn: a later message, before the cue's time, announces another downbeat less than
        # a bar after it (the following bar's cue comes a whole bar later)
        withdrawn = any(d["beat"] != c["beat"] and d["wall_time"] < c["wall_time"] + 0.875 * bar_s
                        for w, d in announced[i + 1:] if w < c["wall_time"])
        if not withdrawn:
            last_cue[c["beat"]] = c
    bars = []
    for c in last_cue.values():
        now, beat, tempo, _ = min(samples, key=lambda s: abs(s[0] - c["wall_time"]))
        bars.append(round(beat + (c["wall_time"] - now) * tempo / 60.0) % 4)
    # most, not all: when the tracker's beat interval sits at 15 frames (200 BPM) against the
    # session's 188, its beats gain on the session's by one every ~16 beats, and a cue made just
    # then is numbered a beat early. Under load this hit 3 of 13 runs here, always on one cue of
    # 5-6 (the interval quantisation is the tracker's, docs/report/beats.md)
    assert len(bars) >= 3 and np.mean([b == 0 for b in bars]) >= 0.75, bars
