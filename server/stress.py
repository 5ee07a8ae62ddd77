"""Load and soak for a running server: what many, stalled, churning or hostile clients cost it.

    python -m server.stress load --seconds 20          # quiet vs loaded hop latency and drops
    python -m server.stress soak --minutes 60          # latency percentiles, drops and RSS over time
    python -m server.stress clients ADDR --seconds 10  # only the clients (used by the above)

``load`` and ``soak`` start their own server on the shipped model and demo library, replaying the
demo track in real time; the clients run in a child process at the lowest CPU priority, so that
the figures are the server's own cost of serving them, not a CPU hog's. docs/reliability.md
reports the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import zmq

from . import config


# ---------------------------------------------------------------------------- the clients
def run_clients(pub_addr: str, ctl_addr: str | None = None, seconds: float = 10.0, stalled: int = 20,
                churning: int = 20, readers: int = 10, fuzz_per_s: float = 0.0, seed: int = 0) -> dict:
    """Connect ``stalled`` subscribers that never read (a receive queue of one message),
    ``churning`` ones that connect and leave every 100 ms, ``readers`` that read everything, and
    optionally send ``fuzz_per_s`` malformed control requests a second. Returns what the readers
    saw (messages, sequence gaps, schema errors) and how many requests got an answer."""
    from . import protocol as P
    from .testing import Subscriber, seq_gaps

    ctx = zmq.Context()
    stuck = [Subscriber(ctx, pub_addr, rcvhwm=1, rcvbuf=4096) for _ in range(stalled)]
    live = [Subscriber(ctx, pub_addr) for _ in range(readers)]
    stop = threading.Event()
    churned = [0]

    def churn():
        c = zmq.Context()
        while not stop.is_set():
            socks = []
            for _ in range(churning):
                s = c.socket(zmq.SUB)
                s.linger = 0
                s.connect(pub_addr)
                s.subscribe(b"")
                socks.append(s)
            stop.wait(0.1)
            for s in socks:
                s.close(0)
            churned[0] += len(socks)
        c.term()

    fuzz = {"sent": 0, "answered": 0, "bad_replies": 0}

    def fuzzer():
        rng = np.random.default_rng(seed)
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        s.connect(ctl_addr)
        bodies = [b"", b"{", b"[]", b'{"cmd":1}', b'{"cmd":"nope"}', b'{"cmd":"set_k","k":-1}',
                  b'{"cmd":"set_library","path":"/etc/passwd"}', b'{"cmd":"ping","id":Infinity}', b"\xff" * 64]
        while not stop.is_set():
            s.send_multipart([b"", bodies[int(rng.integers(len(bodies)))]])
            fuzz["sent"] += 1
            while s.poll(0):
                r = json.loads(s.recv_multipart()[-1])
                fuzz["answered"] += 1
                fuzz["bad_replies"] += bool(P.validate_reply(r))
            stop.wait(1.0 / fuzz_per_s)
        t_end = time.monotonic() + 2.0
        while fuzz["answered"] < fuzz["sent"] and time.monotonic() < t_end:
            if s.poll(100):
                r = json.loads(s.recv_multipart()[-1])
                fuzz["answered"] += 1
                fuzz["bad_replies"] += bool(P.validate_reply(r))
        s.close(0)

    threads = [threading.Thread(target=churn, daemon=True)] if churning else []
    if fuzz_per_s > 0 and ctl_addr:
        threads.append(threading.Thread(target=fuzzer, daemon=True))
    for t in threads:
        t.start()
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        for r in live:
            r.poll(0.01)
    stop.set()
    for t in threads:
        t.join(10)
    out = {"readers": [{"match": len(r.of("match")), "gaps": seq_gaps(r.of("match")), "errors": len(r.errors)}
                       for r in live],
           "churned": churned[0], "stalled": stalled, **({"fuzz": fuzz} if fuzz_per_s > 0 else {})}
    for s in stuck + live:
        s.close()
    ctx.term()
    return out


def spawn_clients(pub_addr: str, ctl_addr: str | None, seconds: float, nice: int = 19, **kw) -> subprocess.Popen:
    """``run_clients`` in a child process at CPU priority ``nice``; its JSON result on stdout."""
    args = [sys.executable, "-m", "server.stress", "clients", pub_addr, "--seconds", str(seconds), "--nice", str(nice)]
    if ctl_addr:
        args += ["--ctl", ctl_addr]
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)


# ---------------------------------------------------------------------------- measuring a server
def rss_mb(pid: int | None = None) -> float:
    with open(f"/proc/{pid or os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _percentiles(v) -> dict:
    a = np.asarray(v, dtype=np.float64)
    if not a.size:
        return {"p50": None, "p99": None, "n": 0}
    return {"p50": round(float(np.percentile(a, 50)), 2), "p99": round(float(np.percentile(a, 99)), 2), "n": int(a.size)}


class Probe:
    """Hop latency (last audio sample in -> match message out, ms) and drops of an in-process
    server over a time span (its ``on_hop`` hook)."""

    def __init__(self, srv):
        self.srv = srv
        self.lat: list[float] = []
        srv.on_hop = self._on_hop

    def _on_hop(self, res):  # called by the worker right after the hop's match message left
        if self.srv.last_latency is not None:
            self.lat.append(float(self.srv.last_latency))

    def span(self, seconds: float) -> dict:
        self.lat = []
        d0 = self.srv.status_dict()["counters"]["drops"]
        time.sleep(seconds)
        d1 = self.srv.status_dict()["counters"]["drops"]
        return {"hop_ms": _percentiles(self.lat), "drops": d1 - d0, "rss_mb": round(rss_mb(), 1)}


def demo_server(pub="tcp://127.0.0.1:*", ctl="tcp://127.0.0.1:*"):
    """A server on the shipped model and demo library, replaying the demo track in real time."""
    from engine.backends import load_backend
    from engine.manifest import resolve_model_dir
    from engine.pipeline import Matcher

    from .app import Server, library_loader
    from .capture import FileSource

    backend = load_backend(str(resolve_model_dir(config.DEFAULT_MODEL_DIR)), threads=1)
    load = library_loader(backend.manifest.fingerprint)
    m = Matcher(backend, load(str(config.DEFAULT_LIBRARY)), instruments=config.DEFAULT_INSTRUMENTS, k=config.DEFAULT_K)
    return Server(m, FileSource(config.DEMO_TRACK, speed=1.0, loop=True), backend_name=backend.name, pub_addr=pub,
                  ctl_addr=ctl, library_loader=load, library_path=str(config.DEFAULT_LIBRARY))


def load_test(seconds: float = 20.0, **clients) -> dict:
    """Quiet span, loaded span (clients in a child process), quiet again: hop latency and drops."""
    srv = demo_server()
    srv.start()
    probe = Probe(srv)
    try:
        time.sleep(3.0)  # the window fills, the first hops warm up
        quiet = probe.span(seconds)
        child = spawn_clients(srv.pub_addr, srv.ctl_addr, seconds + 2.0, **clients)
        time.sleep(1.0)
        loaded = probe.span(seconds)
        seen = json.loads(child.communicate(timeout=120)[0] or "{}")
        after = probe.span(min(seconds, 5.0))
    finally:
        srv.close()
    return {"quiet": quiet, "loaded": loaded, "after": after, "clients": seen}


def soak(minutes: float, every_s: float = 60.0, **clients) -> list[dict]:
    """A long run under the client load, one line of figures every ``every_s``."""
    srv = demo_server()
    srv.start()
    probe = Probe(srv)
    rows = []
    child = spawn_clients(srv.pub_addr, srv.ctl_addr, minutes * 60 + 5, **clients)
    try:
        t_end = time.monotonic() + minutes * 60
        while time.monotonic() < t_end:
            row = {"t_min": round((minutes * 60 - (t_end - time.monotonic())) / 60, 2),
                   **probe.span(min(every_s, max(1.0, t_end - time.monotonic())))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        child.terminate()
        srv.close()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m server.stress", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("load", "soak", "clients"):
        p = sub.add_parser(name, help={"load": "quiet vs loaded hop latency and drops",
                                       "soak": "latency, drops and RSS over a long run",
                                       "clients": "only the clients, against a running server"}[name])
        if name == "clients":
            p.add_argument("pub", help="the server's PUB address")
            p.add_argument("--ctl", default=None, help="its control address (for --fuzz-per-s)")
            p.add_argument("--nice", type=int, default=0, help="CPU priority increment of this process (default 0)")
        p.add_argument("--seconds", type=float, default=20.0, help="length of each span (default 20)")
        if name == "soak":
            p.add_argument("--minutes", type=float, default=15.0, help="length of the soak (default 15)")
            p.add_argument("--every", type=float, default=60.0, help="seconds per line of figures (default 60)")
        p.add_argument("--stalled", type=int, default=20, help="subscribers that never read (default 20)")
        p.add_argument("--churning", type=int, default=20, help="subscribers that come and go every 100 ms (default 20)")
        p.add_argument("--readers", type=int, default=10, help="subscribers that read everything (default 10)")
        p.add_argument("--fuzz-per-s", type=float, default=20.0, help="malformed control requests a second (default 20)")
    a = ap.parse_args(argv)
    kw = dict(stalled=a.stalled, churning=a.churning, readers=a.readers, fuzz_per_s=a.fuzz_per_s)
    if a.cmd == "clients":
        if a.nice:
            os.nice(a.nice)
        print(json.dumps(run_clients(a.pub, a.ctl, a.seconds, **kw)))
        return 0
    logging_quiet()
    if a.cmd == "load":
        r = load_test(a.seconds, **kw)
        q, l_ = r["quiet"]["hop_ms"], r["loaded"]["hop_ms"]
        print(f"quiet : hop p50 {q['p50']} ms  p99 {q['p99']} ms  drops {r['quiet']['drops']}  RSS {r['quiet']['rss_mb']} MB")
        print(f"loaded: hop p50 {l_['p50']} ms  p99 {l_['p99']} ms  drops {r['loaded']['drops']}  RSS {r['loaded']['rss_mb']} MB")
        if q["p99"] and l_["p99"]:
            print(f"loaded / quiet p99: {l_['p99'] / q['p99']:.2f}x  ({l_['p99'] - q['p99']:+.1f} ms)")
        print(json.dumps(r))
        return 0
    soak(a.minutes, a.every, **kw)
    return 0


def logging_quiet() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(message)s")


if __name__ == "__main__":
    sys.exit(main())
