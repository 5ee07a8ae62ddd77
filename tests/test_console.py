"""The server's live status line (server/console.py) and the listen tool's output, fed by a real
PUB socket: input level, tempo and beat flash, best match per instrument, hop latency, drops; a
rich line on a terminal, plain log lines otherwise; ``listen --json`` is pure JSON Lines, and the
stem id is shown exactly as the stream sends it (docs/protocol.md)."""
import io
import json
import logging
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import zmq

from server import config
from server.console import State, StatusLine, check_address, connect_address
from conftest import wait_until

ROOT = Path(__file__).resolve().parents[1]


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _demo_stem():
    """A real stem entry of the shipped demo library (its stem_id / track_id pair)."""
    from engine.library import StemLibrary

    if not config.DEFAULT_LIBRARY.is_file():
        return {"stem_id": "track0/bass", "track_id": "track0", "label": "bass", "category": "bass"}
    return StemLibrary.load(config.DEFAULT_LIBRARY).stems[1]


def _messages(stem, seq=0):
    common = {"v": 1, "seq": seq, "stream_time": 3.2 + seq * 0.16, "wall_time": time.time(), "latency_ms": 12.0}
    beat = {**common, "topic": "beat", "hop": seq, "signal": True, "level_db": -18.4, "tempo": 121.25, "phase": 0.1,
            "beats_in_hop": [3.1], "next_beats": [3.6]}
    item = {"rank": 1, "stem_id": stem["stem_id"], "track_id": stem["track_id"], "label": stem["label"],
            "category": stem["category"], "offset": 4.0, "score": 0.713}
    match = {**common, "topic": "match", "hop": seq, "ready": True, "signal": True, "level_db": -18.4, "k": 1,
             "instruments": ["upright bass", "theremin"], "matches": {"upright bass": [item], "theremin": []}}
    status = {**common, "topic": "status", "state": "running", "counters": {"hops": 40, "drops": 3},
              "latency": {"p50": 14.25, "p99": 19.75}, "library": {"stems": 30, "segments": 178}}
    return [("beat", beat), ("match", match), ("status", status)]


def test_state_folds_the_stream_into_one_line():
    st = State()
    stem = _demo_stem()
    for topic, d in _messages(stem):
        st.update(topic, d, now=100.0)
    line = st.text(now=100.05)
    assert "running" in line and "-18.4 dB" in line
    assert "121.2 BPM" in line or "121.3 BPM" in line
    assert "◆" in line  # a beat in the latest hop flashes
    assert "◇" in st.text(now=101.0)  # ... and goes dark after
    assert f"upright bass {stem['stem_id']} 0.71" in line
    assert f"{stem['track_id']}/{stem['stem_id']}" not in line
    assert "theremin -" in line  # an instrument without a match is shown as such
    assert "p50 14.2" in line and "p99 19.8" in line and "drops 3" in line
    assert st.meter().count("▮") == round((-18.4 + 60) / 60 * 8)
    st.update("match", {"signal": False, "level_db": -80.0, "instruments": [], "matches": {}}, now=102.0)
    assert "silence" in st.text(now=102.0) and st.meter() == "▯" * 8



def _beat(no_beat, signal=True, seq=0):
    """A ``beat`` message: the tracker in 3/4 on the second beat of the bar, or hearing no beat."""
    d = {"v": 1, "topic": "beat", "seq": seq, "hop": seq, "stream_time": 8.0, "wall_time": time.time(),
         "latency_ms": 9.0, "signal": signal, "level_db": -31.0 if signal else -95.0, "no_beat": no_beat,
         "confidence": 0.02 if no_beat else 0.87, "meter": 3, "beats_in_hop": [], "downbeats_in_hop": []}
    if no_beat:
        return {**d, "tempo": None, "phase": None, "beat_in_bar": None, "next_beats": [], "next_downbeat": None}
    return {**d, "tempo": 100.0, "phase": 0.25, "beat_in_bar": 1, "next_beats": [8.45, 9.05],
            "next_downbeat": 9.05, "beats_in_hop": [7.85]}


def test_state_line_shows_the_bar_the_confidence_and_no_beat():
    st = State()
    st.update("beat", _beat(False), now=50.0)
    line = st.text(now=50.05)
    assert "100.0 BPM 3/4 beat 2 ◆ conf 0.87" in line and "no beat" not in line
    st.update("beat", _beat(True), now=51.0)
    line = st.text(now=51.05)
    assert "no beat conf 0.02" in line and "BPM" not in line and "\n" not in line
    st.update("beat", _beat(True, signal=False), now=52.0)
    assert "silence  no beat" in st.text(now=52.0)
    assert "? BPM" in State().text()  # before the first beat message: not known yet

def test_addresses():
    assert check_address("--pub", "tcp://127.0.0.1:5555") is None
    assert check_address("--pub", "tcp://*:5555") is None
    assert "tcp://127.0.0.1:5555" in check_address("--pub", "5555")
    assert "not a ZeroMQ address" in check_address("--pub", "tcp://127.0.0.1:notaport")
    assert "1..65535" in check_address("--pub", "tcp://127.0.0.1:70000")
    assert connect_address("tcp://*:5555") == "tcp://127.0.0.1:5555"
    assert connect_address("tcp://0.0.0.0:5555") == "tcp://127.0.0.1:5555"
    assert connect_address("tcp://10.1.2.3:5555") == "tcp://10.1.2.3:5555"


class _Pub:
    """A PUB socket that republishes the three messages (or ``messages(seq)``) until stopped; on
    ``inproc://`` in the shared context, the one the status line and the listen tool use there."""

    def __init__(self, stem, addr=None, messages=None):
        self.addr = addr or f"tcp://127.0.0.1:{_port()}"
        self.shared = self.addr.startswith("inproc://")
        self.ctx = zmq.Context.instance() if self.shared else zmq.Context()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.linger = 0
        self.sock.bind(self.addr)
        self.stem, self.stop = stem, threading.Event()
        self.messages = messages or (lambda seq: _messages(self.stem, seq))
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        seq = 0
        while not self.stop.is_set():
            for topic, d in self.messages(seq):
                self.sock.send_multipart([topic.encode(), json.dumps(d).encode()])
            seq += 1
            time.sleep(0.02)

    def close(self):
        self.stop.set()
        self.t.join()
        self.sock.close(0)
        if not self.shared:
            self.ctx.term()


@pytest.fixture
def pub():
    p = _Pub(_demo_stem())
    yield p
    p.close()


def test_plain_log_lines_when_not_a_terminal(pub, caplog):
    line = StatusLine(live=False, stream=io.StringIO(), every_s=0.3)
    with caplog.at_level(logging.INFO, logger="server"):
        line.start(pub.addr)
        time.sleep(1.5)
        line.stop()
    lines = [r.getMessage() for r in caplog.records if "BPM" in r.getMessage()]
    assert 2 <= len(lines) <= 6, lines  # one every 0.3 s, not one per message
    assert pub.stem["stem_id"] in lines[-1] and "drops 3" in lines[-1]


def test_live_line_on_a_terminal(pub):
    buf = io.StringIO()
    line = StatusLine(live=True, stream=buf, refresh_hz=20)
    handler = line.log_handler()
    line.start(pub.addr)

    def plain():
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())

    wait_until(lambda: pub.stem["stem_id"] in plain() and ("121.2 BPM" in plain() or "121.3 BPM" in plain()), 10,
               what="the live line to show the stem and the tempo")
    handler.emit(logging.LogRecord("server", logging.INFO, __file__, 1, "a log record above the line", None, None))
    wait_until(lambda: "a log record above the line" in plain(), 5, what="the log record to be drawn")
    line.stop()
    out = buf.getvalue()
    assert "\x1b[" in out  # drawn with terminal control sequences (the live line)
    text = plain()
    assert "121.2 BPM" in text or "121.3 BPM" in text
    assert pub.stem["stem_id"] in text and "a log record above the line" in text


def test_listen_json_is_json_lines_and_human_form_shows_the_stem_id(pub, capsys):
    from server.listen import main

    assert main([pub.addr, "--json", "--count", "9", "--timeout", "10"]) == 0
    cap = capsys.readouterr()
    lines = [ln for ln in cap.out.splitlines() if ln.strip()]
    assert len(lines) == 9
    objs = [json.loads(ln) for ln in lines]  # every stdout line is one JSON object
    assert {o["topic"] for o in objs} == {"match", "beat", "status"}
    assert "listening on" in cap.err and "listening on" not in cap.out
    assert main([pub.addr, "--count", "6", "--timeout", "10", "--topics", "match"]) == 0
    out = capsys.readouterr().out
    stem = pub.stem
    assert re.search(rf"^  upright bass +\+0\.71 {re.escape(stem['stem_id'])}@4\.0s", out, re.M), out
    assert f"{stem['track_id']}/{stem['stem_id']}" not in out
    assert main([pub.addr, "--count", "2", "--timeout", "10", "--topics", "status"]) == 0
    out = capsys.readouterr().out
    assert "drops 3" in out and "latency p50 14.2 p99 19.8 ms" in out and "lib 30 stems, 178 segments" in out


def test_no_beat_over_inproc_in_the_status_line_and_listen(capsys, caplog):
    status = {"v": 1, "topic": "status", "seq": 0, "stream_time": 8.0, "state": "running", "signal": True,
              "no_beat": True, "counters": {"hops": 50, "drops": 0}, "latency": {"p50": 9.0, "p99": 12.0},
              "library": {"stems": 30}}
    pub = _Pub(None, "inproc://console-nobeat", lambda seq: [("beat", _beat(True)), ("status", status)])
    try:
        line = StatusLine(live=False, stream=io.StringIO(), every_s=0.3)
        with caplog.at_level(logging.INFO, logger="server"):
            line.start(pub.addr)
            wait_until(lambda: any("no beat" in r.getMessage() for r in caplog.records), 10,
                       what="a status line that says no beat")
            line.stop()
        msg = next(r.getMessage() for r in caplog.records if "no beat" in r.getMessage())
        assert "conf 0.02" in msg and "BPM" not in msg
        from server.listen import main

        assert main([pub.addr, "--count", "4", "--timeout", "10"]) == 0
        out = capsys.readouterr().out
        assert re.search(r"^beat +no beat +-31\.0 dB +conf 0\.02$", out, re.M), out
        assert re.search(r"^status running .* no beat$", out, re.M), out
        pub.messages = lambda seq: [("beat", _beat(False))]
        assert main([pub.addr, "--count", "2", "--timeout", "10", "--topics", "beat"]) == 0
        out = capsys.readouterr().out
        assert re.search(r"^beat +100\.0 BPM 3/4 beat 2 \[\.\.#\.+\] next \+0\.450s one \+1\.050s +conf 0\.87 BEAT$",
                         out, re.M), out
    finally:
        pub.close()

def test_protocol_doc_uses_the_library_stem_id_form():
    """docs/protocol.md's example items use the stem_id form of the shipped demo library."""
    from engine.library import StemLibrary

    doc = (ROOT / "docs" / "protocol.md").read_text()
    pairs = re.findall(r'"stem_id":"([^"]+)","track_id":"([^"]+)"', doc)
    assert pairs
    if not config.DEFAULT_LIBRARY.is_file():
        pytest.skip("no demo library")
    lib = StemLibrary.load(config.DEFAULT_LIBRARY)
    ids = {(s["stem_id"], s["track_id"]) for s in lib.stems}
    for pair in pairs:
        assert pair in ids, f"docs/protocol.md example {pair} is not a (stem_id, track_id) of the demo library"


NODE_DIR = ROOT / "examples" / "max"


@pytest.mark.skipif(__import__("shutil").which("node") is None or not (NODE_DIR / "node_modules" / "zeromq").is_dir(),
                    reason="node or examples/max/node_modules missing (scripts/setup_system.sh installs them)")
def test_node_subscriber_shows_the_stem_id_as_sent(pub):
    import subprocess

    r = subprocess.run(["node", str(NODE_DIR / "subscriber.js"), pub.addr, "--count", "6", "--timeout", "10"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("match")]
    assert lines, r.stdout
    stem = pub.stem
    assert f"upright bass: {stem['stem_id']} (0.71)" in lines[0], lines[0]
    assert f"{stem['track_id']}/{stem['stem_id']}" not in r.stdout


def test_quiet_and_log_level_are_validated():
    from engine.cli import log_level
    from server.__main__ import parse_args

    assert log_level(parse_args([])) == logging.INFO
    assert log_level(parse_args(["--log-level", "DEBUG"])) == logging.DEBUG  # any case
    assert log_level(parse_args(["--quiet"])) == logging.WARNING
    assert log_level(parse_args(["--quiet", "--log-level", "error"])) == logging.ERROR
    with pytest.raises(SystemExit):
        parse_args(["--log-level", "loud"])
