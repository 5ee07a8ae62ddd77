"""The server process: capture -> ring -> worker hops -> XPUB; control on ROUTER; MIDI clock.

Threads, and the socket each one owns (a socket is used and closed only by its owner):

* the audio producer (PortAudio's callback or the file-replay thread) copies into a CaptureBuffer;
* ``worker`` drains it into the matcher's ring, runs ``process_hop`` (latest wins: the matcher
  skips hops it is late for and counts them), publishes ``beat`` then ``match``, and ``status``
  about every second and at once to a new subscriber; it owns the XPUB socket;
* ``control`` answers requests on the ROUTER socket; it never waits on slow work: a request that
  loads a library or encodes instrument names is handed to ``loader``, and its reply is sent
  when ``loader`` has finished; it owns the ROUTER socket (and the CURVE monitor sockets);
* ``loader`` runs those slow requests one at a time, then swaps the new state into the matcher
  under the hop lock, so it lands between two hops; a load that fails changes nothing;
* ``watchdog`` notices a worker that makes no progress (status ``stalled``; the server exits
  with status 3 when it does not recover) and supervises the sound card (stall, loss, return);
* ``midi`` (optional) emits the clock.

``Server.run()`` blocks until ``stop()`` (called by the SIGINT/SIGTERM handler, by a finished file
replay, by the watchdog, or by a test), then joins every thread within ``config.SHUTDOWN_S`` and
closes every socket. The limits are in ``server.config``; docs/reliability.md says what they cost.
"""
from __future__ import annotations

import collections
import ctypes
import ipaddress
import logging
import os
import queue
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zmq

from . import config, protocol as P
from .capture import Feeder
from .cues import CuePlanner, library_root

log = logging.getLogger("server")


class ConfigError(RuntimeError):
    """A configuration the server refuses to start with (message is for the user)."""


# ---------------------------------------------------------------------------- addresses / CURVE
def is_local_address(addr: str) -> bool:
    """True for inproc://, ipc:// and tcp:// on a loopback interface."""
    if addr.startswith(("inproc://", "ipc://")):
        return True
    if not addr.startswith("tcp://"):
        return False
    host = addr[len("tcp://"):].rsplit(":", 1)[0]
    if ";" in host:  # "source;dest" syntax (connect only)
        return False
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", interface names, hostnames


def load_curve_server(keys_dir: str | Path) -> tuple[bytes, bytes, Path | None]:
    """(public, secret, authorized_clients_dir or None) from a directory made by server.keys."""
    import zmq.auth

    d = Path(keys_dir)
    sec = d / config.CURVE_SERVER_SECRET
    if not sec.is_file():
        raise ConfigError(f"CURVE: {sec} not found; generate keys with `python -m server.keys {d}`")
    try:
        public, secret = zmq.auth.load_certificate(str(sec))
    except Exception as e:
        raise ConfigError(f"CURVE: cannot read {sec}: {e}")
    if not secret:
        raise ConfigError(f"CURVE: {sec} holds no secret key")
    auth = d / config.CURVE_AUTHORIZED_DIR
    return public, secret, (auth if auth.is_dir() else None)


# ---------------------------------------------------------------------------- hop result access
def _level(v) -> float:
    """A level in dBFS for a message: finite, within the schema's [-200, 20]."""
    v = _num(v)
    return -200.0 if v is None else float(min(20.0, max(-200.0, round(v, 2))))


def _get(obj, name, default=None):
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _num(x):
    if x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def _counters(res) -> dict:
    c = _get(res, "counters", None) or {}
    if not isinstance(c, dict):
        c = {k: getattr(c, k) for k in dir(c) if not k.startswith("_") and isinstance(getattr(c, k), (int, float))}
    return c


class _Percentiles:
    def __init__(self, n):
        self.values = collections.deque(maxlen=n)

    def add(self, v):
        if v is not None:
            self.values.append(float(v))

    def stats(self) -> dict:
        if not self.values:
            return {"p50": None, "p99": None, "max": None, "mean": None, "n": 0}
        a = np.fromiter(self.values, dtype=np.float64)
        p50, p99 = np.percentile(a, [50, 99])
        return {"p50": round(float(p50), 3), "p99": round(float(p99), 3), "max": round(float(a.max()), 3),
                "mean": round(float(a.mean()), 3), "n": int(a.size)}


# ---------------------------------------------------------------------------- the server
class Server:
    """One running server around a :class:`engine.pipeline.Matcher`.

    The matcher owns every engine setting (hop, k, instruments, category restriction); the
    server reads them from it and never keeps copies. ``library_roots``: directories under which
    ``set_library`` may open an index (the shipped demo's folder is always one); ``library_loader``:
    ``path -> StemLibrary`` (see :func:`library_loader`); ``watchdog_s``: a worker that makes no
    progress for this long is ``stalled``, and the server exits with ``config.EXIT_STALLED`` when
    it has not recovered after twice as long (0: no watchdog)."""

    def __init__(self, matcher, source, *, backend_name: str = "?", device: str = "cpu",
                 pub_addr: str = config.DEFAULT_PUB, ctl_addr: str = config.DEFAULT_CTL,
                 library_path: str = "", library_loader: Callable[[str], Any] | None = None,
                 library_roots=(), curve_keys: str | Path | None = None, midi=None,
                 context: zmq.Context | None = None, status_period: float = config.STATUS_PERIOD_S,
                 exit_at_end: bool = True, watchdog_s: float = config.WATCHDOG_S,
                 shutdown_s: float = config.SHUTDOWN_S):
        self.matcher = matcher
        self.source = source
        self.backend_name = backend_name
        self.device = device
        self.pub_addr, self.ctl_addr = pub_addr, ctl_addr
        self.library_path = str(library_path)
        self.library_loader = library_loader
        roots = [config.DEFAULT_LIBRARY.parent, *[Path(r) for r in library_roots]]
        self.library_roots = list(dict.fromkeys(Path(os.path.realpath(r)) for r in roots))
        self.midi = midi
        self.status_period = status_period
        self.exit_at_end = exit_at_end
        self.watchdog_s = float(watchdog_s)
        self.shutdown_s = float(shutdown_s)

        for a in (pub_addr, ctl_addr):
            if not is_local_address(a) and curve_keys is None:
                raise ConfigError(
                    f"refusing to bind {a}: it is not a loopback address, and binding beyond this machine "
                    f"requires CURVE encryption. Generate keys with `python -m server.keys KEYDIR` and pass "
                    f"--curve-keys KEYDIR (clients then need KEYDIR/{config.CURVE_SERVER_PUBLIC} and a client key).")
        self.curve = load_curve_server(curve_keys) if curve_keys is not None else None

        self._own_ctx = context is None
        self.ctx = context or zmq.Context()
        self.lock = threading.RLock()  # held by the worker during a hop and by every state swap
        self.stopping = threading.Event()
        self.state = "running"
        self.exit_code = 0
        self.stuck: list[str] = []  # threads that did not stop within shutdown_s (set by close())
        self.t_start = time.time()
        self.seq = {t: 0 for t in P.TOPICS}
        self.n_ctl = 0
        self.n_ctl_err = 0
        self.hop_errors = 0
        self.stalls = 0
        self.curve_denied = 0
        self.busy = 0
        self.subscriptions = 0
        self.lat = _Percentiles(config.LATENCY_WINDOW)
        self.timings: dict[str, collections.deque] = {}
        self.last_latency = None
        self.last_stream_time = 0.0
        self.last_counters: dict = {}
        self.last_signal: bool | None = None
        self.last_level_db: float | None = None
        self.finished = False
        self.feeder = Feeder(source.capture)
        self.feeder.attach(matcher.ring)
        self._threads: list[threading.Thread] = []
        self._auth = None
        self.pub = self.ctl = None
        self._monitors: list = []
        self._jobs: queue.Queue = queue.Queue(maxsize=config.MAX_PENDING_JOBS)
        self._replies: queue.SimpleQueue = queue.SimpleQueue()  # (envelope, reply) from loader to control
        self._alive = time.monotonic()  # the worker's last sign of progress
        self._status_now = threading.Event()  # ask the worker to publish status at its next turn
        self._resync_now = threading.Event()  # the input came back after a gap: restart the stream
        self._state_before_stall = "running"
        self._last_trim = 0.0
        self.midi_error: str | None = None  # why MIDI is off although it was asked for
        self.on_hop: Callable | None = None  # test hook: called with each hop result
        self.cues = CuePlanner()  # playable fields of match items (server/cues.py)

    # -- settings: owned by the matcher -----------------------------------------------------------
    @property
    def k(self) -> int:
        return int(self.matcher.k)

    @property
    def hop_ms(self) -> float:
        return float(self.matcher.hop_ms)

    @property
    def instruments(self) -> list[str]:
        return list(self.matcher.instruments)

    @property
    def restrict_category(self) -> bool:
        return bool(self.matcher.restrict_category)

    @property
    def ranking(self) -> dict:
        """How matches are ranked: ``{"mode": "model" | "model+keytempo", "keytempo_weight": a}``."""
        return {"mode": str(getattr(self.matcher, "ranking", "model")),
                "keytempo_weight": float(getattr(self.matcher, "keytempo_weight", 0.0))}

    # -- sockets ----------------------------------------------------------------------------------
    def _secure(self, sock) -> None:
        if self.curve is None:
            return
        public, secret, _ = self.curve
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
        # failed CURVE handshakes are counted and logged by the control thread
        self._monitors.append(sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                                      | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL))

    def _bind(self) -> None:
        if self.curve is not None:
            from zmq.auth.thread import ThreadAuthenticator

            self._auth = ThreadAuthenticator(self.ctx)
            self._auth.start()
            auth_dir = self.curve[2]
            if auth_dir is not None:
                self._auth.configure_curve(domain="*", location=str(auth_dir))
            else:
                self._auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
        # XPUB: a PUB that also hands us the subscriptions, so a new subscriber gets status at once
        pub = self.ctx.socket(zmq.XPUB)
        pub.linger = 0
        pub.sndhwm = config.PUB_SNDHWM
        pub.rcvhwm = config.PUB_RCVHWM
        pub.sndbuf = config.PUB_SNDBUF
        pub.setsockopt(zmq.XPUB_VERBOSER, 1)  # every subscribe and unsubscribe, from every peer
        # a subscription message is a topic prefix: one of a few bytes is all a client needs;
        # without a cap, one 8-MiB SUBSCRIBE grew the server by 700 MB and froze the hop worker
        pub.setsockopt(zmq.MAXMSGSIZE, config.MAX_SUB_WIRE_BYTES)
        self._secure(pub)
        ctl = self.ctx.socket(zmq.ROUTER)
        ctl.linger = 0
        ctl.sndhwm = 100
        ctl.setsockopt(zmq.MAXMSGSIZE, config.MAX_CTL_WIRE_BYTES)
        ctl.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self._secure(ctl)
        for sock, addr in ((pub, self.pub_addr), (ctl, self.ctl_addr)):
            if _is_ipv6(addr):
                sock.ipv6 = True
        try:
            pub.bind(self.pub_addr)
            ctl.bind(self.ctl_addr)
        except zmq.ZMQError as e:
            for sck in (pub, ctl, *self._monitors):
                sck.close(0)
            self._monitors = []
            raise ConfigError(f"cannot bind ({e}); is another server running on {self.pub_addr} / {self.ctl_addr}?")
        self.pub, self.ctl = pub, ctl
        # wildcard ports ("tcp://127.0.0.1:*") resolve to the real endpoint
        self.pub_addr = pub.getsockopt_string(zmq.LAST_ENDPOINT) or self.pub_addr
        self.ctl_addr = ctl.getsockopt_string(zmq.LAST_ENDPOINT) or self.ctl_addr

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, start_source: bool = True) -> None:
        self._bind()
        self._alive = time.monotonic()
        self._threads = [threading.Thread(target=self._worker_main, name="worker", daemon=True),
                         threading.Thread(target=self._control_main, name="control", daemon=True),
                         threading.Thread(target=self._loader_main, name="loader", daemon=True),
                         threading.Thread(target=self._watchdog_main, name="watchdog", daemon=True)]
        for t in self._threads:
            t.start()
        if self.midi is not None:
            self.midi.start()
        if start_source:
            self.source.start()

    def stop(self) -> None:
        self.stopping.set()
        self.source.capture.ready.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.stopping.wait(timeout)

    def close(self) -> None:
        """Stop and release everything within about ``shutdown_s``, whatever a thread is doing.
        A thread that does not stop in time (a hop stuck in the engine) keeps its socket, and the
        context is then left to the process's exit instead of waiting on it forever."""
        self.stop()
        deadline = time.monotonic() + self.shutdown_s
        try:
            self.source.stop()
        except Exception:
            pass
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        if self.midi is not None:
            self.midi.stop()
        stuck = [t.name for t in self._threads if t.is_alive() and t.name in ("worker", "control")]
        self.stuck = stuck
        if not self._threads:  # never started: the sockets are still ours
            for s in (self.pub, self.ctl, *self._monitors):
                if s is not None:
                    s.close(0)
        if self._auth is not None:
            self._auth.stop()
        if stuck:
            log.error("shutdown: %s did not stop within %.1f s; leaving its socket to the process exit",
                      ", ".join(stuck), self.shutdown_s)
            self.exit_code = self.exit_code or config.EXIT_STALLED
        elif self._own_ctx:
            self.ctx.term()

    def run(self) -> int:
        """Start, serve until stopped, close; returns the exit status (0, or EXIT_STALLED)."""
        self.start()
        try:
            while not self.stopping.wait(0.2):
                pass
        finally:
            self.close()
        return self.exit_code

    # -- worker -----------------------------------------------------------------------------------
    def _worker_main(self) -> None:
        try:
            self._worker_loop()
        finally:
            self.pub.close(0)

    def _worker_loop(self) -> None:
        cap = self.source.capture
        next_status = time.monotonic()
        fast = getattr(self.source, "speed", None) is not None and self.source.speed <= 0
        while not self.stopping.is_set():
            self._alive = time.monotonic()
            timeout = max(0.0, min(0.05, next_status - time.monotonic()))
            cap.ready.wait(timeout)
            cap.ready.clear()
            self._read_subscriptions()
            if self._resync_now.is_set():
                self._resync_now.clear()
                with self.lock:
                    self.feeder.pump(self.matcher.ring)
                    self._resync()
            idle = done = False
            while not self.stopping.is_set():
                with self.lock:
                    done = cap.done
                    self.feeder.pump(self.matcher.ring)
                    if self.state == "paused":
                        res = None  # audio keeps flowing into the ring; no hop is computed
                    else:
                        try:
                            res = self.matcher.process_hop()
                            k_used = self.k  # the k of this hop (a set_k may land before it is published)
                        except Exception:
                            self.hop_errors += 1
                            log.error("hop failed:\n%s", traceback.format_exc())
                            res = None
                self._alive = time.monotonic()
                if res is None:
                    idle = True
                    break
                self._publish_hop(res, k_used)
            if fast and idle:
                self.source.consumed.set()
            if time.monotonic() >= next_status or self._status_now.is_set():
                self._status_now.clear()
                self._publish("status", self.status_dict())
                next_status = time.monotonic() + self.status_period
            if idle and done and cap.read_pos >= cap.written and not self.finished:
                self.finished = True
                self.state = "finished"
                self._publish("status", self.status_dict())
                log.info("end of input")
                if self.exit_at_end:
                    self.stop()

    def _read_subscriptions(self) -> None:
        """Drain XPUB's (un)subscription messages: byte 1/0 + topic prefix. A subscription that
        covers ``status`` gets the latest status at once; a departure returns freed memory."""
        left = False
        while True:
            try:
                msg = self.pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError:
                return
            if not msg:
                continue
            if msg[0] == 1:
                self.subscriptions += 1
                if b"status".startswith(msg[1:]):
                    self._status_now.set()
            elif msg[0] == 0:
                self.subscriptions = max(0, self.subscriptions - 1)
                left = True
        if left:
            self._trim_memory()

    def _trim_memory(self) -> None:
        """Give the C heap's free pages back to the system (glibc keeps them otherwise: a stalled
        subscriber's queue stayed in RSS after it left). At most every 5 s."""
        now = time.monotonic()
        if now - self._last_trim < 5.0:
            return
        self._last_trim = now
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass  # not glibc

    def _publish(self, topic: str, msg: dict) -> None:
        msg["seq"] = self.seq[topic]
        msg["wall_time"] = time.time()
        if msg.get("_arrival") is not None:
            msg["latency_ms"] = max(0.0, (msg["wall_time"] - msg.pop("_arrival")) * 1000.0)
        else:
            msg.pop("_arrival", None)
        try:
            self.pub.send_multipart([topic.encode(), P.dumps(msg)], flags=zmq.NOBLOCK)
        except zmq.Again:  # PUB does not block; be safe anyway
            return
        except zmq.ZMQError:
            if self.stopping.is_set():
                return
            raise
        self.seq[topic] += 1
        if topic == "match":  # one per hop: the latency statistics cover every hop
            self.last_latency = msg.get("latency_ms")
            self.lat.add(self.last_latency)

    def _publish_hop(self, res, k: int | None = None) -> None:
        st = _num(_get(res, "stream_time")) or 0.0
        end = _get(res, "end_sample", None)
        if end is None:
            end = int(round(st * config.SAMPLE_RATE))
        arrival = self.feeder.arrival_of_ring_pos(int(end))
        c = _counters(res)
        self.last_counters = c
        self.last_stream_time = st
        self.last_signal = bool(_get(res, "signal", True))
        self.last_level_db = _level(_get(res, "level_db", None))
        # hop index counting dropped hops: consecutive messages differ by 1 + drops in between
        hop = _get(res, "hop_index", None)
        if hop is None:
            hop = max(0, int(c.get("hops", 1)) + int(c.get("drops", 0)) - 1)
        hop = int(hop)
        timings = {str(k): float(v) for k, v in (_get(res, "timings", None) or {}).items() if _num(v) is not None}
        for k_, v in timings.items():
            self.timings.setdefault(k_, collections.deque(maxlen=config.LATENCY_WINDOW)).append(v)
        beat = self._beat_msg(res, st, hop, arrival)
        if beat is not None:
            self._publish("beat", beat)
        self._publish("match", self._match_msg(res, st, hop, arrival, timings, self.k if k is None else k))
        if self.midi is not None and beat is not None:
            self.midi.update_from_beat(beat, getattr(self.source, "speed", None) or 1.0)
        if self.on_hop is not None:
            self.on_hop(res)

    def _header(self, topic, st, arrival) -> dict:
        return {"v": P.VERSION, "topic": topic, "seq": 0, "stream_time": st, "wall_time": 0.0,
                "latency_ms": 0.0, "_arrival": arrival if arrival is not None else time.time()}

    def _match_msg(self, res, st, hop, arrival, timings, k: int) -> dict:
        m = self._header("match", st, arrival)
        matches = _get(res, "matches", None) or {}
        cues = self.cues.plan(res, st, arrival, getattr(self.source, "speed", None) or 1.0,
                              _get(self.matcher, "library", None))
        out = {}
        for inst, items in matches.items():
            lst = []
            for r, it in enumerate(items or []):
                lst.append({"rank": r + 1, "stem_id": str(_get(it, "stem_id", "")),
                            "track_id": str(_get(it, "track_id", "")), "label": str(_get(it, "label", "")),
                            "category": str(_get(it, "category", "")),
                            "offset": max(0.0, _num(_get(it, "offset", 0.0)) or 0.0),
                            "score": _num(_get(it, "score", 0.0)) or 0.0, **cues.fields(it)})
            out[str(inst)] = lst
        ready = bool(_get(res, "ready", True))
        signal = bool(_get(res, "signal", True))
        m.update({"hop": hop, "ready": ready, "signal": signal, "level_db": _level(_get(res, "level_db", None)),
                  "k": int(k),
                  "instruments": list(matches.keys()) or list(self.instruments),
                  "matches": out, "timings_ms": timings})
        return m

    def _beat_msg(self, res, st, hop, arrival) -> dict | None:
        b = _get(res, "beat", None)
        if b is None:
            b = _get(res, "beats", None)
        if b is None:
            return None
        tempo = _num(_get(b, "tempo"))
        if tempo is not None and tempo <= 0:
            tempo = None
        phase = _num(_get(b, "phase"))
        if phase is not None:
            phase = phase % 1.0
        nb = _get(b, "next_beats", None)
        nb = [] if nb is None else [float(x) for x in np.asarray(nb, dtype=np.float64).reshape(-1) if np.isfinite(x)]
        act = _get(res, "activation", None)
        if act is None:
            act = _get(b, "activation", None)
        act = [] if act is None else np.clip(np.nan_to_num(np.asarray(act, dtype=np.float64).reshape(-1)), 0, 1)
        conf = _num(_get(b, "confidence"))
        signal = bool(_get(res, "signal", True))
        if not signal:  # silence is reported as silence: no tempo, no phase, no forecast
            tempo = phase = None
            nb = []
            conf = 0.0
        speed = getattr(self.source, "speed", None) or 1.0
        base = arrival if arrival is not None else time.time()
        m = self._header("beat", st, arrival)
        m.update({
            "hop": hop, "signal": signal, "level_db": _level(_get(res, "hop_level_db", None)),
            "tempo": tempo, "phase": phase, "period_s": (60.0 / tempo) if tempo else None,
            "last_beat": _num(_get(b, "last_beat")) if signal else None, "next_beats": nb,
            "next_beats_wall": [base + (x - st) / speed for x in nb],
            "beats_in_hop": [] if not signal else
            [float(x) for x in np.asarray(_get(b, "beats", None) if _get(b, "beats", None)
                                          is not None else [], dtype=np.float64).reshape(-1)],
            "confidence": None if conf is None else min(1.0, max(0.0, conf)),
            "activation": [round(float(a), 5) for a in act], "activation_rate": 50.0,
            "activation_time": _num(_get(res, "activation_time", None)),
        })
        return m

    # -- status -----------------------------------------------------------------------------------
    def library_info(self) -> dict:
        """The library in use: ``stems`` (distinct stems) and ``segments`` (8-s windows indexed)
        counted separately, ``tracks``, and the roots ``set_library`` may open."""
        lib = self.matcher.library
        stems = segments = 0
        tracks = None
        if lib is not None:
            segments = len(lib)
            stems = len(lib.stems)
            tracks = len({str(s.get("track_id", "")) for s in lib.stems})
        return {"path": self.library_path, "stems": int(stems), "segments": int(segments), "tracks": tracks,
                "roots": [str(r) for r in self.library_roots]}

    def status_dict(self) -> dict:
        c = self.last_counters
        st = self.source.info()
        midi = self.midi.info() if self.midi is not None else {
            "enabled": False, "port": None, "channel": config.MIDI_CHANNEL, "note": config.MIDI_NOTE,
            "clocks": 0, "notes": 0, "error": self.midi_error}
        inp = getattr(self.source, "health", None)
        inp = inp() if inp is not None else {}
        msg = {"v": P.VERSION, "topic": "status", "seq": 0, "stream_time": float(self.last_stream_time),
               "wall_time": 0.0, "latency_ms": self.last_latency, "state": self.state,
               "uptime_s": round(time.time() - self.t_start, 3), "backend": self.backend_name,
               "device": self.device, "input": st, "instruments": self.instruments, "k": self.k,
               "hop_ms": self.hop_ms, "restrict_category": self.restrict_category, "ranking": self.ranking,
               "streaming": bool(getattr(self.matcher, "streaming", False)),
               "library": {**self.library_info(), "audio_root": library_root(_get(self.matcher, "library", None))},
               "counters": {"hops": int(c.get("hops", 0)), "drops": int(c.get("drops", 0)),
                            "overruns": int(c.get("overruns", self.matcher.ring.overruns)),
                            "capture_overruns": int(self.source.capture.overruns),
                            "published": dict(self.seq), "ctl_requests": self.n_ctl,
                            "ctl_errors": self.n_ctl_err, "hop_errors": self.hop_errors,
                            "nonfinite": int(c.get("nonfinite", 0)), "restarts": int(c.get("restarts", 0)),
                            "stalls": self.stalls, "curve_denied": self.curve_denied, "busy": self.busy,
                            "input_stalls": int(inp.get("stalls", 0)), "input_reopens": int(inp.get("reopens", 0)),
                            "input_glitches": int(inp.get("glitches", 0))},
               "subscriptions": self.subscriptions,
               "signal": self.last_signal, "level_db": self.last_level_db,
               "latency": self.lat.stats(),
               "timings_ms": {k: round(float(np.median(v)), 3) for k, v in list(self.timings.items()) if v},
               "midi": midi, "pub": self.pub_addr, "ctl": self.ctl_addr, "protocol": P.VERSION}
        return msg

    # -- watchdog ---------------------------------------------------------------------------------
    def _watchdog_main(self) -> None:
        while not self.stopping.wait(0.25):
            now = time.monotonic()
            if self.watchdog_s > 0:
                age = now - self._alive
                if age > self.watchdog_s:
                    if self.state != "stalled":
                        self._state_before_stall, self.state = self.state, "stalled"
                        self.stalls += 1
                        log.error("watchdog: the hop worker has made no progress for %.1f s (a hop stuck in the "
                                  "engine?); exiting with status %d if it does not recover within %.1f s",
                                  age, config.EXIT_STALLED, self.watchdog_s)
                    if age > 2 * self.watchdog_s:
                        log.error("watchdog: no recovery after %.1f s; stopping the server", age)
                        self.exit_code = config.EXIT_STALLED
                        self.stop()
                        return
                elif self.state == "stalled":
                    self.state = self._state_before_stall
                    log.warning("watchdog: the hop worker recovered")
                    self._status_now.set()
            supervise = getattr(self.source, "supervise", None)
            if supervise is not None:
                for event in supervise(now):
                    log.warning("input: %s", event)
                    self._status_now.set()
                    if event.startswith("resumed"):
                        self._resync_now.set()  # the gap is not music: restart the stream after it
                    self.source.capture.ready.set()

    # -- control ----------------------------------------------------------------------------------
    def _control_main(self) -> None:
        try:
            self._control_loop()
        finally:
            for s in (self.ctl, *self._monitors):
                s.close(0)

    def _control_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.ctl, zmq.POLLIN)
        for m in self._monitors:
            poller.register(m, zmq.POLLIN)
        while not self.stopping.is_set():
            self._send_replies()
            try:
                ready = dict(poller.poll(20))
            except zmq.ZMQError:
                if self.stopping.is_set():
                    return
                continue
            for m in self._monitors:
                if m in ready:
                    self._read_monitor(m)
            if self.ctl not in ready:
                continue
            try:
                frames = self.ctl.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                continue
            except zmq.ZMQError:
                if self.stopping.is_set():
                    return
                continue
            try:
                envelope, body = _split_envelope(frames)
            except ValueError:
                continue  # no identity frame: cannot answer (cannot happen on ROUTER)
            reply = self.handle_frames(body, envelope)
            if reply is not None:
                self._send(envelope, reply)

    def _send(self, envelope: list[bytes], reply: dict) -> None:
        try:
            self.ctl.send_multipart(envelope + [P.dumps(reply)], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # peer gone or its queue full: drop the reply, never block

    def _send_replies(self) -> None:
        while True:
            try:
                envelope, reply = self._replies.get_nowait()
            except queue.Empty:
                return
            self._send(envelope, reply)

    def _read_monitor(self, sock) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while True:
            try:
                ev = recv_monitor_message(sock, zmq.NOBLOCK)
            except (zmq.Again, zmq.ZMQError):
                return
            self.curve_denied += 1
            log.warning("CURVE: a peer failed the handshake on %s (%s); %d refused so far",
                        ev.get("endpoint", b"?").decode(errors="replace"),
                        "not authorised" if ev.get("event") == zmq.EVENT_HANDSHAKE_FAILED_AUTH else "protocol error",
                        self.curve_denied)

    def handle_frames(self, body: list[bytes], envelope: list[bytes] | None = None) -> dict | None:
        """One request's body frames -> its reply. A slow command (``SLOW``) is queued for the
        loader thread when ``envelope`` is given, and None is returned: the loader sends the reply
        through the control thread when it is done. Without an envelope it runs here."""
        self.n_ctl += 1
        req_id = None
        try:
            req = P.parse_request(body, config.MAX_CTL_BYTES)
            req_id = req.get("id")
            if not (req_id is None or isinstance(req_id, (str, int, float)) and not isinstance(req_id, bool)):
                req_id = None
            cmd = req["cmd"]
            out = self._command(cmd)(req)  # slow commands check their arguments here and return the work to do
            if callable(out):
                if envelope is None:
                    return self._finish(cmd, req_id, out)
                try:
                    self._jobs.put_nowait((envelope, cmd, req_id, out))
                except queue.Full:
                    self.busy += 1
                    raise P.ProtocolError(P.E_BUSY, f"{config.MAX_PENDING_JOBS} slow requests are already "
                                                    "in progress; retry when one has been answered")
                return None
            return self._reply(cmd, req_id, out)
        except P.ProtocolError as e:
            self.n_ctl_err += 1
            return P.error_reply(e.code, e.message, req_id)
        except Exception as e:  # the engine raised: report, keep serving
            self.n_ctl_err += 1
            log.error("control command failed:\n%s", traceback.format_exc())
            return P.error_reply(P.E_INTERNAL, f"{type(e).__name__}: {e}", req_id)

    @staticmethod
    def _reply(cmd, req_id, out: dict) -> dict:
        reply = {"ok": True, "cmd": cmd, **out}
        if req_id is not None:
            reply["id"] = req_id
        return reply

    def _finish(self, cmd, req_id, work: Callable[[], dict]) -> dict:
        try:
            return self._reply(cmd, req_id, work())
        except P.ProtocolError as e:
            self.n_ctl_err += 1
            return P.error_reply(e.code, e.message, req_id)
        except Exception as e:
            self.n_ctl_err += 1
            log.error("control command %s failed:\n%s", cmd, traceback.format_exc())
            return P.error_reply(P.E_INTERNAL, f"{type(e).__name__}: {e}", req_id)

    def _loader_main(self) -> None:
        while not self.stopping.is_set():
            try:
                envelope, cmd, req_id, work = self._jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            self._replies.put((envelope, self._finish(cmd, req_id, work)))

    COMMANDS = ("ping", "status", "get_instruments", "set_instruments", "get_k", "set_k", "set_library",
                "set_hop", "restrict_category", "set_ranking", "pause", "resume", "reset", "set_midi", "help")

    def _command(self, cmd: str) -> Callable[[dict], Any]:
        """The handler of a command name (raises ProtocolError for any other name)."""
        fn = getattr(self, "_cmd_" + cmd, None) if cmd in self.COMMANDS else None
        if fn is None:
            raise P.ProtocolError(P.E_UNKNOWN_CMD, f"unknown command {cmd[:64]!r}; known: {', '.join(self.COMMANDS)}")
        return fn

    def handle(self, req: dict) -> dict:
        """Run one parsed request here, slow ones included (tests, tools); raises ProtocolError."""
        cmd = req["cmd"]
        out = self._command(cmd)(req)
        return {"ok": True, "cmd": cmd, **(out() if callable(out) else out)}

    def _cmd_ping(self, req):
        return {"pong": True, "wall_time": time.time(), "protocol": P.VERSION}

    def _cmd_help(self, req):
        return {"commands": list(self.COMMANDS), "topics": list(P.TOPICS), "protocol": P.VERSION}

    def _cmd_status(self, req):
        s = self.status_dict()
        s["wall_time"] = time.time()
        return {"status": s}

    def _cmd_get_instruments(self, req):
        return {"instruments": self.instruments}

    def _cmd_get_k(self, req):
        return {"k": self.k}

    def _cmd_set_instruments(self, req):
        """Slow: encoding new names runs on the loader thread, the swap between two hops."""
        names = P.arg(req, "instruments", list)
        if not 1 <= len(names) <= config.MAX_INSTRUMENTS:
            raise P.ProtocolError(P.E_BAD_ARGS, f'"instruments" needs 1..{config.MAX_INSTRUMENTS} names, got {len(names)}')
        clean = []
        for n in names:
            if not isinstance(n, str) or not n.strip() or len(n) > 200:
                raise P.ProtocolError(P.E_BAD_ARGS, '"instruments" must be non-empty strings of at most 200 characters')
            clean.append(" ".join(n.split()))

        def work():
            try:
                prepared = self.matcher.prepare_instruments(clean)
            except (ValueError, TypeError, KeyError) as e:
                raise P.ProtocolError(P.E_BAD_ARGS, str(e))
            with self.lock:
                self.matcher.apply_instruments(prepared)
            return {"instruments": self.instruments}

        return work

    def _cmd_set_k(self, req):
        k = P.arg(req, "k", int, lo=1, hi=config.MAX_K)
        with self.lock:
            try:
                self.matcher.set_k(k)
            except (ValueError, TypeError) as e:
                raise P.ProtocolError(P.E_BAD_ARGS, str(e))
        return {"k": self.k}

    def _cmd_set_hop(self, req):
        ms = P.arg(req, "ms", float, lo=config.HOP_MS_RANGE[0], hi=config.HOP_MS_RANGE[1])
        with self.lock:
            try:
                self.matcher.set_hop(ms)
            except (ValueError, TypeError) as e:
                raise P.ProtocolError(P.E_BAD_ARGS, str(e))
        return {"ms": self.hop_ms}

    def _cmd_restrict_category(self, req):
        on = P.arg(req, "enabled", bool)
        with self.lock:
            self.matcher.set_restrict_category(on)
        return {"enabled": self.restrict_category}

    def _cmd_set_ranking(self, req):
        a = P.arg(req, "keytempo_weight", float, lo=0.0, hi=1.0)
        with self.lock:
            self.matcher.set_keytempo_weight(a)
        return {"ranking": self.ranking}

    def resolve_library(self, path: str) -> Path:
        """The index file ``path`` names, if it lies under one of ``library_roots`` (a file
        ``*.npz``, or a folder holding ``library.npz``; relative paths are taken from each root
        in turn). Every other path gets the same error, whether or not it exists, so that a
        client cannot probe the file system."""
        refused = P.ProtocolError(P.E_LIBRARY, f"{path[:200]}: not a stem library index under the allowed roots "
                                               f"(the shipped demo and --library-root)")
        if not path or len(path) > 4096 or "\x00" in path:
            raise refused
        cands = [Path(path)] if os.path.isabs(path) else [r / path for r in self.library_roots]
        for c in cands:
            real = Path(os.path.realpath(c))
            if real.is_dir():
                real = real / "library.npz"
            if real.suffix != ".npz" or not real.is_file():
                continue
            if any(real.is_relative_to(r) for r in self.library_roots):
                return real
        raise refused

    def _cmd_set_library(self, req):
        """Slow: the index is read on the loader thread and swapped in between two hops."""
        path = P.arg(req, "path", str)
        if self.library_loader is None:
            raise P.ProtocolError(P.E_UNAVAILABLE, "this server cannot load libraries")
        real = self.resolve_library(path)

        def work():
            from engine.library import LibraryError

            try:
                lib = self.library_loader(str(real))
            except Exception as e:
                raise P.ProtocolError(P.E_LIBRARY, f"{type(e).__name__}: {e}")
            if lib is None or not len(lib):
                raise P.ProtocolError(P.E_LIBRARY, f"{path}: the library holds no segments; nothing to match")
            with self.lock:
                try:
                    self.matcher.set_library(lib)
                except LibraryError as e:
                    raise P.ProtocolError(P.E_LIBRARY, str(e))
                self.library_path = str(real)
            return {"library": self.library_info()}

        return work

    def _cmd_pause(self, req):
        with self.lock:
            if self.state == "running":
                self.state = "paused"
        return {"state": self.state}

    def _cmd_resume(self, req):
        with self.lock:
            if self.state == "paused":
                self.feeder.pump(self.matcher.ring)
                self._resync()
                self.state = "running"
        return {"state": self.state}

    def _cmd_reset(self, req):
        with self.lock:
            self.matcher.reset()
            self.feeder.attach(self.matcher.ring)
        return {"state": self.state}

    def _resync(self) -> None:
        fn = getattr(self.matcher, "resync", None)
        (fn or self.matcher.reset)()
        self.feeder.attach(self.matcher.ring)

    def _cmd_set_midi(self, req):
        if self.midi is None:
            raise P.ProtocolError(P.E_UNAVAILABLE, "MIDI is off (start the server with --midi)")
        ch = P.arg(req, "channel", int, lo=1, hi=16, required=False)
        note = P.arg(req, "note", int, lo=0, hi=127, required=False)
        vel = P.arg(req, "velocity", int, lo=1, hi=127, required=False)
        self.midi.configure(channel=ch, note=note, velocity=vel)
        return {"midi": self.midi.info()}


def _split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """ROUTER frames -> (reply envelope, body). The envelope is everything up to and including
    the first empty delimiter frame: ``[id, b"", body]`` from REQ, ``[id, request-id, b"", body]``
    from REQ with ZMQ_REQ_CORRELATE (the request id must come back), ``[id, body]`` from a DEALER
    that sends no delimiter."""
    if not frames:
        raise ValueError("no frames")
    for i in range(1, len(frames)):
        if frames[i] == b"":
            return frames[:i + 1], frames[i + 1:]
    return frames[:1], frames[1:]


def _is_ipv6(addr: str) -> bool:
    """A tcp:// address whose host is an IPv6 literal (libzmq binds it only with ZMQ_IPV6 on)."""
    return addr.startswith("tcp://") and addr[len("tcp://"):].startswith("[")


def library_loader(fingerprint: str | None) -> Callable[[str], Any]:
    """``path -> StemLibrary`` for a server: the model's fingerprint and the size limits of
    ``server.config`` are checked before anything large is read."""
    from engine.library import StemLibrary

    def load(path: str):
        return StemLibrary.load(path, expect_fingerprint=fingerprint, max_bytes=config.MAX_LIBRARY_BYTES,
                                max_segments=config.MAX_LIBRARY_SEGMENTS, max_stems=config.MAX_LIBRARY_STEMS)

    return load
