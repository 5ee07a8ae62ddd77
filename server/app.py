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

This module is the lifecycle: sockets, threads, the worker loop, the watchdog, shutdown. What the
worker publishes is built in ``server/messages.py``; the control and loader threads and every
command are ``server/control.py``. Both are mixed into :class:`Server`.
"""
from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import zmq

from . import config, protocol as P
from .addresses import ConfigError, _is_ipv6, is_local_address, load_curve_server
from .capture import Feeder
from .control import Control, library_loader
from .cues import CuePlanner
from .messages import Messages, Percentiles

__all__ = ["ConfigError", "Server", "is_local_address", "library_loader", "load_curve_server"]

log = logging.getLogger("server")


# ---------------------------------------------------------------------------- the server
class Server(Control, Messages):
    """One running server around a :class:`engine.pipeline.Matcher`: its sockets, threads and
    lifecycle; the messages it publishes come from :class:`server.messages.Messages`, the control
    commands from :class:`server.control.Control`.

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
        self.lat = Percentiles(config.LATENCY_WINDOW)
        self.timings: dict[str, collections.deque] = {}
        self.last_latency = None
        self.last_stream_time = 0.0
        self.last_counters: dict = {}
        self.last_signal: bool | None = None
        self.last_level_db: float | None = None
        self.last_no_beat: bool | None = None  # the latest beat message's no-beat state
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
        return {"mode": str(self.matcher.ranking), "keytempo_weight": float(self.matcher.keytempo_weight)}

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

    def _resync(self) -> None:
        """Restart the stream on the newest audio (after a pause or an input gap)."""
        self.matcher.resync()
        self.feeder.attach(self.matcher.ring)

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
