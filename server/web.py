"""``--web [HOST:PORT]``: one live page for the performer, fed by a WebSocket bridge from the
server's PUB stream (the ``websockets`` package; ``pip install -e '.[web]'``).

One port serves

* ``GET /`` -- the page (``server/webpage.html``): per instrument the top matches with their
  scores, each playable in the browser at its suggested cue (Web Audio: the file from
  ``cue.stem_pos`` at rate ``stretch``, started at ``cue.wall_time``), a beat and tempo indicator,
  an input level meter and a latency sparkline;
* ``GET /audio/<path>`` -- the library's stem files, by their ``path`` under
  ``status.library.audio_root`` (nothing outside that folder);
* ``/ws`` -- a WebSocket: every published message as ``{"topic": ..., "msg": {...}}`` (the
  protocol's JSON, unchanged), and ``{"pong": t, "server": unix_s}`` for each ``{"ping": t}`` the
  page sends (it estimates the offset between its clock and the server's from these).

Loopback only: the page has no authentication, so any other address is refused at start.
"""
from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import threading
import time
from pathlib import Path
from urllib.parse import unquote

log = logging.getLogger("server.web")
PAGE = Path(__file__).resolve().parent / "webpage.html"
DEFAULT_WEB = "127.0.0.1:8765"
_TYPES = {".flac": "audio/flac", ".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".m4a": "audio/mp4"}


class WebSink:
    """The WebSocket/HTTP server in its own asyncio thread; ``handle`` (bridge thread) forwards
    each message to every open page."""

    def __init__(self, host: str, port: int, server=None):
        try:
            import websockets  # noqa: F401
        except ImportError as e:
            raise ImportError("--web needs websockets: pip install -e '.[web]'") from e
        import ipaddress

        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"--web {host}:{port}: the page has no authentication, so it binds to loopback "
                             f"only (127.0.0.1 or ::1); reach it from elsewhere through an SSH tunnel")
        self.server = server
        self.page = PAGE.read_bytes()
        self.clients: set = set()
        self.sent = 0
        from .cues import library_root

        root = library_root(getattr(getattr(server, "matcher", None), "library", None))
        self.audio_root: Path | None = Path(root) if root else None  # then from every status message
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, args=(host, int(port)), name="web", daemon=True)
        self._thread.start()
        if not self._ready.wait(10.0):
            raise OSError("the live page server did not start within 10 s")
        if self._error is not None:
            raise OSError(f"--web {host}:{port}: {self._error}")

    # -- asyncio side -----------------------------------------------------------------------------
    def _run(self, host: str, port: int) -> None:
        from websockets.asyncio.server import serve

        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self._stop = asyncio.Event()

        async def main():
            async with serve(self._ws, host, port, process_request=self._http, max_size=2 ** 16,
                             compression=None) as srv:
                self.port = srv.sockets[0].getsockname()[1]
                self.url = f"http://{host if ':' not in host else '[' + host + ']'}:{self.port}/"
                self._ready.set()
                await self._stop.wait()

        try:
            self.loop.run_until_complete(main())
        except BaseException as e:  # noqa: BLE001 - reported to the constructor
            self._error = e
            self._ready.set()
        finally:
            self.loop.close()

    def _response(self, status: int, body: bytes, ctype: str):
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(status, "Error")
        h = Headers([("Content-Type", ctype), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
        return Response(status, reason, h, body)

    def _http(self, connection, request):
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            return None  # the WebSocket handshake goes on
        if path in ("/", "/index.html"):
            return self._response(200, self.page, "text/html; charset=utf-8")
        if path.startswith("/audio/"):
            f = self._audio_file(unquote(path[len("/audio/"):]))
            if f is None:
                return self._response(404, b"no such stem file in the library\n", "text/plain")
            ctype = _TYPES.get(f.suffix.lower()) or mimetypes.guess_type(f.name)[0] or "application/octet-stream"
            return self._response(200, f.read_bytes(), ctype)
        return self._response(404, b"not found\n", "text/plain")

    def _audio_file(self, rel: str) -> Path | None:
        root = self.audio_root
        if root is None or not rel or "\x00" in rel:
            return None
        f = (root / rel).resolve()
        if not f.is_relative_to(root.resolve()) or not f.is_file():
            return None
        return f

    async def _ws(self, conn) -> None:
        self.clients.add(conn)
        try:
            async for text in conn:
                try:
                    req = json.loads(text)
                except ValueError:
                    continue
                if isinstance(req, dict) and "ping" in req:
                    await conn.send(json.dumps({"pong": req["ping"], "server": time.time()}))
        except Exception:  # a page that went away
            pass
        finally:
            self.clients.discard(conn)

    def _broadcast(self, text: str) -> None:
        from websockets.asyncio.server import broadcast

        if self.clients:
            broadcast(self.clients, text)
            self.sent += 1

    # -- bridge side ------------------------------------------------------------------------------
    def handle(self, topic: str, msg: dict) -> None:
        if topic == "status":
            root = (msg.get("library") or {}).get("audio_root")
            self.audio_root = Path(root) if root else None
        text = json.dumps({"topic": topic, "msg": msg}, separators=(",", ":"))
        self.loop.call_soon_threadsafe(self._broadcast, text)

    def close(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass
        self._thread.join(timeout=3.0)
