"""Every default the server uses, in one place."""
from __future__ import annotations

from pathlib import Path

import engine
from engine.manifest import DEFAULT_MODEL_DIR as _DEFAULT_MODEL_DIR
from engine.manifest import DEMO_TRACK as _DEMO_TRACK

#: shipped assets (produced by export/ and engine/library; may be absent in a fresh checkout)
ASSETS_DIR = Path(engine.__file__).resolve().parent / "assets"
DEFAULT_MODEL_DIR = _DEFAULT_MODEL_DIR  # one owner: engine.manifest
DEFAULT_LIBRARY = ASSETS_DIR / "demo" / "library.npz"
DEMO_TRACK = _DEMO_TRACK  # one owner: engine.manifest

SAMPLE_RATE = 16000  # Hz, model rate
DEFAULT_INSTRUMENTS = ["drums", "fretless bass", "warm pad"]
DEFAULT_K = 5
#: search each instrument among its category's stems only (``--no-restrict-category`` turns it off)
RESTRICT_CATEGORY = True
DEFAULT_HOP_MS = 160
DEFAULT_WINDOW_S = 8.0
BPM_RANGE = (55.0, 215.0)  # beat tracker tempo range (engine.beats defaults); --min-bpm / --max-bpm

DEFAULT_PUB = "tcp://127.0.0.1:5555"
DEFAULT_CTL = "tcp://127.0.0.1:5556"
# A stalled subscriber costs at most PUB_SNDHWM messages in libzmq's queue plus PUB_SNDBUF bytes of
# kernel buffer. The largest message is a match at MAX_K x MAX_INSTRUMENTS (about 0.3 MB), so the
# bound is about 10 MB per subscriber at the extreme and about 0.3 MB at the defaults
# (docs/reliability.md). 32 messages are 2-3 s of stream at the default hop.
PUB_SNDHWM = 32
PUB_SNDBUF = 256 * 1024  # bytes of kernel send buffer per TCP subscriber
PUB_RCVHWM = 64  # subscription messages queued before libzmq stops reading a peer
STATUS_PERIOD_S = 1.0
LATENCY_WINDOW = 1000  # hops kept for the p50/p99 latency statistics

MAX_CTL_BYTES = 64 * 1024  # a control request larger than this gets a "too_large" error
SIGNAL_THRESHOLD_DB = -60.0  # window RMS below this is silence (engine.pipeline.Matcher)
MAX_SUB_WIRE_BYTES = 4096  # ZMQ_MAXMSGSIZE on PUB: a subscription (topic prefix) longer than this disconnects the peer
MAX_CTL_WIRE_BYTES = 1024 * 1024  # ZMQ_MAXMSGSIZE: peers sending more are disconnected by libzmq
MAX_INSTRUMENTS = 16
MAX_K = 100
HOP_MS_RANGE = (10, 2000)

# reliability (docs/reliability.md)
WATCHDOG_S = 5.0  # no worker progress for this long: status "stalled"; twice as long: exit code 3
EXIT_STALLED = 3  # exit status of a server the watchdog stopped
SHUTDOWN_S = 3.0  # close() returns within about this long, whatever a thread is doing
INPUT_TIMEOUT_S = 1.0  # a sound card that delivers nothing for this long is "stalled"
INPUT_RETRY_S = 2.0  # then the stream is reopened this often until audio flows again
MAX_PENDING_JOBS = 2  # set_library / set_instruments queued off the control thread; more: "busy"
MAX_LIBRARY_BYTES = 512 * 1024 * 1024  # a stem library index larger than this on disk is refused
MAX_LIBRARY_SEGMENTS = 200_000  # ... or with more segments than this (about 200 MB at width 256)
MAX_LIBRARY_STEMS = 50_000

# audio capture
CAPTURE_SECONDS = 4.0  # capacity of the capture buffer (device rate)
DEVICE_BLOCKSIZE = 0  # 0: let PortAudio choose (lowest latency)
FILE_BLOCK_S = 0.01  # file replay writes blocks of this many seconds (like an audio callback)

# MIDI
MIDI_PORT_NAME = "stemjepa clock"
MIDI_CHANNEL = 10  # 1..16
MIDI_NOTE = 37  # GM side stick
MIDI_VELOCITY = 100
MIDI_NOTE_LENGTH_S = 0.05
# while the clock runs, the interpreter's thread switch interval is at most this (s; CPython's
# default is 5 ms): the clock thread waits at most about this long for the GIL when it wakes for
# a tick. Measured on 2 cores with a Python-bound thread beside it: ticks handed to the port late
# by 2.5 ms (median) and 4.3 ms (90th percentile) at 5 ms, 0.02 ms and 0.9 ms at 0.5 ms.
MIDI_GIL_SWITCH_S = 0.0005
MIDI_NO_BEAT = "hold"  # what the clock does while the tracker hears no beat: "hold" (keep ticking) or "stop"

# CURVE key files written by `python -m server.keys DIR`
CURVE_SERVER_SECRET = "server.key_secret"
CURVE_SERVER_PUBLIC = "server.key"
CURVE_CLIENT_SECRET = "client.key_secret"
CURVE_CLIENT_PUBLIC = "client.key"
CURVE_AUTHORIZED_DIR = "authorized_clients"


def model_present(model_dir) -> bool:
    """A model directory: full (manifest.json) or packed (packed.json, forms built into the cache)."""
    from pathlib import Path as _P

    d = _P(model_dir)
    return (d / "manifest.json").is_file() or (d / "packed.json").is_file()
