"""The server process: capture -> ring -> worker hops -> PUB; control on ROUTER; MIDI clock.

Threads:

* the audio producer (PortAudio's callback or the file-replay thread) copies into a CaptureBuffer;
* ``worker`` drains it into the matcher's ring, runs ``process_hop`` (latest wins: the matcher
  skips hops it is late for and counts them), publishes ``beat`` then ``match``, and ``status``
  about every second; it owns the PUB socket;
* ``control`` answers requests on the ROUTER socket; engine changes are applied under a lock that
  the worker holds while it runs a hop, so a command lands between two hops;
* ``midi`` (optional) emits the clock.

``Server.run()`` blocks until ``stop()`` (called by the SIGINT/SIGTERM handler, by a finished file
replay, or by a test), then joins every thread and closes every socket.
"""
from __future__ import annotations

import collections
import ipaddress
import logging
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
    def __init__(self, matcher, source, *, backend_name: str = "?", device: str = "cpu",
                 pub_addr: str = config.DEFAULT_PUB, ctl_addr: str = config.DEFAULT_CTL,
                 library_path: str = "", library_loader: Callable[[str], Any] | None = None,
                 curve_keys: str | Path | None = None, midi=None, context: zmq.Context | None = None,
                 status_period: float = config.STATUS_PERIOD_S, exit_at_end: bool = True,
                 hop_ms: float = config.DEFAULT_HOP_MS, k: int = config.DEFAULT_K,
                 instruments: list | None = None, restrict_category: bool = False):
        self.matcher = matcher
        self.source = source
        self.backend_name = backend_name
        self.device = device
        self.pub_addr, self.ctl_addr = pub_addr, ctl_addr
        self.library_path = str(library_path)
        self.library_loader = library_loader
        self.midi = midi
        self.status_period = status_period
        self.exit_at_end = exit_at_end
        self.hop_ms = float(hop_ms)
        self.k = int(k)
        self.instruments = list(instruments or _get(matcher, "instruments", []) or [])
        self.restrict_category = bool(restrict_category)

        for a in (pub_addr, ctl_addr):
            if not is_local_address(a) and curve_keys is None:
                raise ConfigError(
                    f"refusing to bind {a}: it is not a loopback address, and binding beyond this machine "
                    f"requires CURVE encryption. Generate keys with `python -m server.keys KEYDIR` and pass "
                    f"--curve-keys KEYDIR (clients then need KEYDIR/{config.CURVE_SERVER_PUBLIC} and a client key).")
        self.curve = load_curve_server(curve_keys) if curve_keys is not None else None

        self._own_ctx = context is None
        self.ctx = context or zmq.Context()
        self.lock = threading.RLock()  # held by the worker during a hop and by control mutations
        self.stopping = threading.Event()
        self.state = "running"
        self.t_start = time.time()
        self.seq = {t: 0 for t in P.TOPICS}
        self.n_ctl = 0
        self.n_ctl_err = 0
        self.hop_errors = 0
        self.paused_hops = 0
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
        self.midi_error: str | None = None  # why MIDI is off although it was asked for
        self.on_hop: Callable | None = None  # test hook: called with each hop result
        self.cues = CuePlanner()  # playable fields of match items (server/cues.py)

    # -- sockets ----------------------------------------------------------------------------------
    def _secure(self, sock) -> None:
        if self.curve is None:
            return
        public, secret, _ = self.curve
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True

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
        pub = self.ctx.socket(zmq.PUB)
        pub.linger = 0
        pub.sndhwm = config.PUB_SNDHWM
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
        try:
            pub.bind(self.pub_addr)
            ctl.bind(self.ctl_addr)
        except zmq.ZMQError as e:
            pub.close(0)
            ctl.close(0)
            raise ConfigError(f"cannot bind ({e}); is another server running on {self.pub_addr} / {self.ctl_addr}?")
        self.pub, self.ctl = pub, ctl
        # wildcard ports ("tcp://127.0.0.1:*") resolve to the real endpoint
        self.pub_addr = pub.getsockopt_string(zmq.LAST_ENDPOINT) or self.pub_addr
        self.ctl_addr = ctl.getsockopt_string(zmq.LAST_ENDPOINT) or self.ctl_addr

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, start_source: bool = True) -> None:
        self._bind()
        self._threads = [threading.Thread(target=self._worker_main, name="worker", daemon=True),
                         threading.Thread(target=self._control_main, name="control", daemon=True)]
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
        self.stop()
        try:
            self.source.stop()
        except Exception:
            pass
        for t in self._threads:
            t.join(timeout=5.0)
        if self.midi is not None:
            self.midi.stop()
        for s in (self.pub, self.ctl):
            if s is not None:
                s.close(0)
        if self._auth is not None:
            self._auth.stop()
        if self._own_ctx:
            self.ctx.term()

    def run(self) -> None:
        self.start()
        try:
            while not self.stopping.wait(0.2):
                pass
        finally:
            self.close()

    # -- worker -----------------------------------------------------------------------------------
    def _worker_main(self) -> None:
        cap = self.source.capture
        next_status = time.monotonic()
        fast = getattr(self.source, "speed", None) is not None and self.source.speed <= 0
        while not self.stopping.is_set():
            timeout = max(0.0, min(0.05, next_status - time.monotonic()))
            cap.ready.wait(timeout)
            cap.ready.clear()
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
                        except Exception:
                            self.hop_errors += 1
                            log.error("hop failed:\n%s", traceback.format_exc())
                            res = None
                if res is None:
                    idle = True
                    break
                self._publish_hop(res)
            if fast and idle:
                self.source.consumed.set()
            if time.monotonic() >= next_status:
                self._publish("status", self.status_dict())
                next_status = time.monotonic() + self.status_period
            if idle and done and cap.read_pos >= cap.written and not self.finished:
                self.finished = True
                self.state = "finished"
                self._publish("status", self.status_dict())
                log.info("end of input")
                if self.exit_at_end:
                    self.stop()

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
        if topic == "beat":
            self.last_latency = msg.get("latency_ms")
            self.lat.add(self.last_latency)

    def _publish_hop(self, res) -> None:
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
        self._publish("match", self._match_msg(res, st, hop, arrival, timings))
        if self.midi is not None and beat is not None:
            self.midi.update_from_beat(beat, getattr(self.source, "speed", None) or 1.0)
        if self.on_hop is not None:
            self.on_hop(res)

    def _header(self, topic, st, arrival) -> dict:
        return {"v": P.VERSION, "topic": topic, "seq": 0, "stream_time": st, "wall_time": 0.0,
                "latency_ms": 0.0, "_arrival": arrival if arrival is not None else time.time()}

    def _match_msg(self, res, st, hop, arrival, timings) -> dict:
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
                  "k": self.k,
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
        lib = _get(self.matcher, "library", None)
        n = 0
        tracks = None
        if lib is not None:
            try:
                n = len(lib)
            except TypeError:
                n = int(_get(lib, "n_stems", 0) or 0)
            t = _get(lib, "n_tracks", None)
            if t is None:
                tids = _get(lib, "track_ids", None)
                if tids is not None:
                    t = len(set(np.asarray(tids).tolist()))
            tracks = None if t is None else int(t)
        return {"path": self.library_path, "stems": int(n), "tracks": tracks}

    def status_dict(self) -> dict:
        c = self.last_counters
        st = self.source.info()
        midi = self.midi.info() if self.midi is not None else {
            "enabled": False, "port": None, "channel": config.MIDI_CHANNEL, "note": config.MIDI_NOTE,
            "clocks": 0, "notes": 0, "error": self.midi_error}
        msg = {"v": P.VERSION, "topic": "status", "seq": 0, "stream_time": float(self.last_stream_time),
               "wall_time": 0.0, "latency_ms": self.last_latency, "state": self.state,
               "uptime_s": round(time.time() - self.t_start, 3), "backend": self.backend_name,
               "device": self.device, "input": st, "instruments": list(self.instruments), "k": self.k,
               "hop_ms": self.hop_ms, "restrict_category": self.restrict_category, "library": {**self.library_info(), "audio_root": library_root(_get(self.matcher, "library", None))},
               "counters": {"hops": int(c.get("hops", 0)), "drops": int(c.get("drops", 0)),
                            "overruns": int(c.get("overruns", _get(self.matcher.ring, "overruns", 0))),
                            "capture_overruns": int(self.source.capture.overruns),
                            "published": dict(self.seq), "ctl_requests": self.n_ctl,
                            "ctl_errors": self.n_ctl_err, "hop_errors": self.hop_errors,
                            "nonfinite": int(c.get("nonfinite", 0)), "restarts": int(c.get("restarts", 0))},
               "signal": self.last_signal, "level_db": self.last_level_db,
               "latency": self.lat.stats(),
               "timings_ms": {k: round(float(np.median(v)), 3) for k, v in list(self.timings.items()) if v},
               "midi": midi, "pub": self.pub_addr, "ctl": self.ctl_addr, "protocol": P.VERSION}
        return msg

    # -- control ----------------------------------------------------------------------------------
    def _control_main(self) -> None:
        poller = zmq.Poller()
        poller.register(self.ctl, zmq.POLLIN)
        while not self.stopping.is_set():
            try:
                if not dict(poller.poll(100)):
                    continue
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
            reply = self.handle_frames(body)
            try:
                self.ctl.send_multipart(envelope + [P.dumps(reply)], flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # peer gone or its queue full: drop the reply, never block

    def handle_frames(self, body: list[bytes]) -> dict:
        self.n_ctl += 1
        req_id = None
        try:
            req = P.parse_request(body, config.MAX_CTL_BYTES)
            req_id = req.get("id")
            if not (req_id is None or isinstance(req_id, (str, int, float)) and not isinstance(req_id, bool)):
                req_id = None
            reply = self.handle(req)
            if req_id is not None:
                reply["id"] = req_id
            return reply
        except P.ProtocolError as e:
            self.n_ctl_err += 1
            return P.error_reply(e.code, e.message, req_id)
        except Exception as e:  # the engine raised: report, keep serving
            self.n_ctl_err += 1
            log.error("control command failed:\n%s", traceback.format_exc())
            return P.error_reply(P.E_INTERNAL, f"{type(e).__name__}: {e}", req_id)

    COMMANDS = ("ping", "status", "get_instruments", "set_instruments", "get_k", "set_k", "set_library",
                "set_hop", "restrict_category", "pause", "resume", "reset", "set_midi", "help")

    def handle(self, req: dict) -> dict:
        cmd = req["cmd"]
        fn = getattr(self, "_cmd_" + cmd, None) if cmd in self.COMMANDS else None
        if fn is None:
            raise P.ProtocolError(P.E_UNKNOWN_CMD, f"unknown command {cmd[:64]!r}; known: {', '.join(self.COMMANDS)}")
        out = fn(req)
        return {"ok": True, "cmd": cmd, **out}

    def _cmd_ping(self, req):
        return {"pong": True, "wall_time": time.time(), "protocol": P.VERSION}

    def _cmd_help(self, req):
        return {"commands": list(self.COMMANDS), "topics": list(P.TOPICS), "protocol": P.VERSION}

    def _cmd_status(self, req):
        s = self.status_dict()
        s["wall_time"] = time.time()
        return {"status": s}

    def _cmd_get_instruments(self, req):
        return {"instruments": list(self.instruments)}

    def _cmd_get_k(self, req):
        return {"k": self.k}

    def _cmd_set_instruments(self, req):
        names = P.arg(req, "instruments", list)
        if not 1 <= len(names) <= config.MAX_INSTRUMENTS:
            raise P.ProtocolError(P.E_BAD_ARGS, f'"instruments" needs 1..{config.MAX_INSTRUMENTS} names, got {len(names)}')
        clean = []
        for n in names:
            if not isinstance(n, str) or not n.strip() or len(n) > 200:
                raise P.ProtocolError(P.E_BAD_ARGS, '"instruments" must be non-empty strings of at most 200 characters')
            clean.append(" ".join(n.split()))
        with self.lock:
            try:
                self.matcher.set_instruments(clean)
            except (ValueError, TypeError, KeyError) as e:
                raise P.ProtocolError(P.E_BAD_ARGS, str(e))
            self.instruments = clean
        return {"instruments": clean}

    def _cmd_set_k(self, req):
        k = P.arg(req, "k", int, lo=1, hi=config.MAX_K)
        with self.lock:
            try:
                self.matcher.set_k(k)
            except (ValueError, TypeError) as e:
                raise P.ProtocolError(P.E_BAD_ARGS, str(e))
            self.k = k
        return {"k": k}

    def _cmd_set_hop(self, req):
        ms = P.arg(req, "ms", float, lo=config.HOP_MS_RANGE[0], hi=config.HOP_MS_RANGE[1])
        with self.lock:
            try:
                self.matcher.set_hop(ms)
            except (ValueError, TypeError) as e:
                raise P.ProtocolError(P.E_BAD_ARGS, str(e))
            self.hop_ms = float(_get(self.matcher, "hop_ms", ms) or ms)
        return {"ms": self.hop_ms}

    def _cmd_restrict_category(self, req):
        on = P.arg(req, "enabled", bool)
        with self.lock:
            fn = getattr(self.matcher, "set_restrict_category", None)
            if fn is not None:
                fn(on)
            else:
                self.matcher.restrict_category = on
            self.restrict_category = on
        return {"enabled": on}

    def _cmd_set_library(self, req):
        path = P.arg(req, "path", str)
        if self.library_loader is None:
            raise P.ProtocolError(P.E_UNAVAILABLE, "this server cannot load libraries")
        if not path or len(path) > 4096 or "\x00" in path:
            raise P.ProtocolError(P.E_BAD_ARGS, '"path" must be a file path')
        if not Path(path).exists():
            raise P.ProtocolError(P.E_NOT_FOUND, f"{path}: no such file")
        try:
            lib = self.library_loader(path)  # outside the lock: hops keep running while it loads
        except P.ProtocolError:
            raise
        except Exception as e:
            raise P.ProtocolError(P.E_LIBRARY, f"{type(e).__name__}: {e}")
        with self.lock:
            self.matcher.set_library(lib)
            self.library_path = path
        return {"library": self.library_info()}

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
    """ROUTER frames -> (reply envelope, body). REQ peers send ``[id, b"", body...]``; DEALER
    peers may omit the empty delimiter."""
    if not frames:
        raise ValueError("no frames")
    ident, rest = frames[0], frames[1:]
    if rest and rest[0] == b"":
        return [ident, b""], rest[1:]
    return [ident], rest
