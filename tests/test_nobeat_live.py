"""No beat where there is none, through the live path: the shipped model directory
(engine/assets/model, its cache built once by ``python -m export.cache``), the real front end
and :class:`engine.pipeline.Matcher`, the tracker's no-beat state, the server's ``beat`` message
and a MIDI clock in ``stop`` mode. Silence, white noise, a sustained chord and a steady sine give
no beats, confidence near 0, and no clock tick; the demo track (music) gives beats and ticks."""
import time
from types import SimpleNamespace

import numpy as np
import pytest

from engine.manifest import DEFAULT_MODEL_DIR

SR = 16000
SECONDS = 12.0


@pytest.fixture(scope="module")
def matcher():
    pytest.importorskip("onnxruntime")
    from engine.backends import load_backend
    from engine.pipeline import Matcher
    from export.cache import ensure_built

    be = load_backend(ensure_built(DEFAULT_MODEL_DIR, log=lambda *_: None), threads=1)
    return Matcher(be, None, instruments=[], drop_late=False)


def signals():
    t = np.arange(int(SR * SECONDS)) / SR
    rng = np.random.default_rng(0)
    return {
        "silence": np.zeros_like(t),
        "white noise": 0.2 * rng.standard_normal(t.size),
        "sustained chord": sum(0.08 * np.sin(2 * np.pi * f * k * t) / k
                               for f in (261.6, 329.6, 392.0) for k in range(1, 5)),
        "steady sine": 0.3 * np.sin(2 * np.pi * 440.0 * t),
    }


class Port:
    def __init__(self):
        self.events = []

    def send_message(self, msg):
        self.events.append(list(msg))

    def close_port(self):
        pass


def beat_messages(matcher, audio):
    """The server's ``beat`` message of every hop (server.messages builds them; no sockets)."""
    from server.messages import Messages

    fake = SimpleNamespace(source=SimpleNamespace(speed=1.0), _header=Messages._header)
    matcher.reset()
    out = []
    for res in matcher.run_array(audio.astype(np.float32)):
        m = Messages._beat_msg(fake, res, float(res.stream_time), int(res.hop_index), time.time())
        if m is not None:
            out.append((res, m))
    return out


@pytest.mark.parametrize("name", sorted(signals()))
def test_no_beats_no_confidence_no_clock(matcher, name):
    from server.midi import CLOCK, MidiClock
    from server.protocol import validate_message

    msgs = beat_messages(matcher, signals()[name])
    assert len(msgs) > 50
    for res, m in msgs:
        assert res.beat.beats == [] and m["beats_in_hop"] == [], (name, res.stream_time)
        assert res.beat.no_beat and m["no_beat"]
        assert res.beat.confidence < 0.05 and m["confidence"] < 0.05, (name, res.stream_time, res.beat.confidence)
        assert m["tempo"] is None and m["next_beats"] == [] and m["beat_in_bar"] is None
        m.pop("_arrival")
        m["wall_time"] = time.time()
        assert not validate_message("beat", m), validate_message("beat", m)
    assert msgs[-1][1]["signal"] == (name != "silence")
    # a clock in stop mode fed these messages never ticks
    port = Port()
    clock = MidiClock(port, no_beat="stop")
    clock.start()
    for _, m in msgs:
        clock.update_from_beat(m)
    time.sleep(0.3)
    clock.stop()
    assert clock.clocks == 0 and not any(e[0] == CLOCK for e in port.events)


def test_music_gives_beats_and_ticks(matcher):
    from engine.audio import load_audio
    from server.config import DEMO_TRACK
    from server.midi import MidiClock

    if not DEMO_TRACK.is_file():
        pytest.skip("no demo track")
    msgs = beat_messages(matcher, load_audio(DEMO_TRACK)[: int(SR * SECONDS)])
    beats = [b for _, m in msgs for b in m["beats_in_hop"]]
    assert len(beats) >= 10
    late = [m for _, m in msgs if m["stream_time"] > 4.0]
    assert np.mean([not m["no_beat"] for m in late]) > 0.9
    assert max(m["confidence"] for m in late) > 0.5
    port = Port()
    clock = MidiClock(port, no_beat="stop")
    clock.start()
    for _, m in msgs:  # the last message's grid, fed at once: the clock starts on it
        m["next_beats_wall"] = [time.time() + 0.05 + i * m["period_s"] for i in range(4)] if m["period_s"] else []
        m["next_downbeat_wall"] = None
        clock.update_from_beat(m)
    time.sleep(0.4)
    clock.stop()
    assert clock.clocks > 0 and clock.starts == 1, (clock._grid(), clock.error, msgs[-1][1])
