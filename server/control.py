"""The control socket: the ``control`` thread (ROUTER, and the CURVE monitor sockets), request
parsing and validation, the command handlers ``_cmd_*`` (docs/protocol.md, *Commands*), the
``loader`` thread that runs slow requests, and where ``set_library`` may open an index.

:class:`Control` is mixed into :class:`server.app.Server`, whose ``__init__`` sets the state
used here (``ctl``, ``_monitors``, ``_jobs``, ``_replies``, ``lock``, the counters); the matcher
owns every engine setting, and a handler changes one only through the matcher's own setter,
under the hop lock.
"""
from __future__ import annotations

import logging
import os
import queue
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import zmq

from . import config, protocol as P
from .midi import NO_BEAT_MODES

log = logging.getLogger("server")


class Control:
    """The control thread, the loader thread and the commands (mixed into :class:`server.app.Server`)."""

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

    def _apply(self, setter: Callable[[Any], None], value) -> None:
        """``setter(value)``, one of the matcher's setters, between two hops; a value it refuses
        is a ``bad_args`` error."""
        with self.lock:
            try:
                setter(value)
            except (ValueError, TypeError) as e:
                raise P.ProtocolError(P.E_BAD_ARGS, str(e))

    def _cmd_set_k(self, req):
        self._apply(self.matcher.set_k, P.arg(req, "k", int, lo=1, hi=config.MAX_K))
        return {"k": self.k}

    def _cmd_set_hop(self, req):
        self._apply(self.matcher.set_hop, P.arg(req, "ms", float, lo=config.HOP_MS_RANGE[0], hi=config.HOP_MS_RANGE[1]))
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

    def _cmd_set_midi(self, req):
        if self.midi is None:
            raise P.ProtocolError(P.E_UNAVAILABLE, "MIDI is off (start the server with --midi)")
        ch = P.arg(req, "channel", int, lo=1, hi=16, required=False)
        note = P.arg(req, "note", int, lo=0, hi=127, required=False)
        vel = P.arg(req, "velocity", int, lo=1, hi=127, required=False)
        no_beat = P.arg(req, "no_beat", str, required=False)
        if no_beat is not None and no_beat not in NO_BEAT_MODES:
            raise P.ProtocolError(P.E_BAD_ARGS, f'"no_beat" must be one of {", ".join(NO_BEAT_MODES)}, got {no_beat[:40]!r}')
        self.midi.configure(channel=ch, note=note, velocity=vel, no_beat=no_beat)
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


def library_loader(fingerprint: str | None) -> Callable[[str], Any]:
    """``path -> StemLibrary`` for a server: the model's fingerprint and the size limits of
    ``server.config`` are checked before anything large is read."""
    from engine.library import StemLibrary

    def load(path: str):
        return StemLibrary.load(path, expect_fingerprint=fingerprint, max_bytes=config.MAX_LIBRARY_BYTES,
                                max_segments=config.MAX_LIBRARY_SEGMENTS, max_stems=config.MAX_LIBRARY_STEMS)

    return load
