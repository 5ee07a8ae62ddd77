"""``python -m server.listen [ADDR] [--topics match,beat,status]``: watch the stream in a terminal.

Per instrument: the top-k stems (score, stem id, offset); per beat message the tempo, the meter
and the current beat's place in the bar (1 = the downbeat), the beat phase, the time to the next
beat and to the next downbeat ("one"), the confidence -- or "no beat" (and "no signal" below the
signal threshold) while the tracker hears none; a status line with counters, latency, and the
signal and no-beat state. ``--json``: exactly one JSON object per line on stdout
(each message as sent; its ``topic`` field names the topic), everything else on stderr.
Ctrl-C exits cleanly. Exit status: 0, 1 when --check found a message off the schema, 2 on an error.
"""
from __future__ import annotations

import json
import signal
import sys
import time

import zmq

from engine.cli import CliError, Parser, guarded

from . import config, protocol as P
from .console import check_address


def _fmt_match(d: dict, width: int = 3) -> list[str]:
    lines = [f"match  seq {d.get('seq')}  t={d.get('stream_time', 0):8.2f}s  latency {d.get('latency_ms', 0):6.1f} ms"]
    for inst in d.get("instruments", []):
        items = d.get("matches", {}).get(inst, [])[:width]
        cells = "  ".join(f"{it['score']:+.2f} {it['stem_id']}@{it['offset']:.1f}s" for it in items)
        lines.append(f"  {inst[:18]:<18} {cells}")
    return lines


def _fmt_beat(d: dict) -> str:
    """``beat    94.2 BPM 4/4 beat 1 [#.......] next +0.480s one +1.760s  conf 0.83 DOWNBEAT``, or
    ``beat   no beat  -31.0 dB  conf 0.02`` (``no signal`` below the signal threshold)."""
    tempo, conf = d.get("tempo"), f"conf {d.get('confidence') or 0:.2f}"
    if d.get("no_beat") or not tempo:
        level = d.get("level_db")
        sig = "no signal" if d.get("signal") is False else ("" if level is None else f"{level:.1f} dB")
        return "  ".join(x for x in ("beat   no beat", sig, conf) if x)
    st = d["stream_time"]
    nb, down = d.get("next_beats") or [], d.get("next_downbeat")
    nxt = f"{nb[0] - st:+.3f}s" if nb else "-"
    meter, bib = d.get("meter"), d.get("beat_in_bar")
    bar = f" {meter}/4 beat {bib + 1}" if meter and bib is not None else ""
    one = "" if down is None else f" one {down - st:+.3f}s"
    ph = d.get("phase")
    cells = "" if ph is None else " [" + "".join("#" if i == int(ph * 8) else "." for i in range(8)) + "]"
    hit = " DOWNBEAT" if d.get("downbeats_in_hop") else " BEAT" if d.get("beats_in_hop") else ""
    return f"beat   {tempo:6.1f} BPM{bar}{cells} next {nxt}{one}  {conf}{hit}"


def _fmt_status(d: dict) -> str:
    c, lat = d.get("counters", {}), d.get("latency", {})
    p50, p99 = lat.get("p50"), lat.get("p99")
    flags = ("  no signal" if d.get("signal") is False else "") + ("  no beat" if d.get("no_beat") else "")
    return (f"status {d.get('state')}  {d.get('backend')}  up {d.get('uptime_s', 0):.0f}s  hops {c.get('hops')} "
            f"drops {c.get('drops')} overruns {c.get('overruns')}  latency p50 "
            f"{'-' if p50 is None else f'{p50:.1f}'} p99 {'-' if p99 is None else f'{p99:.1f}'} ms  "
            + _fmt_library(d.get("library") or {}) + flags)


def _fmt_library(lib: dict) -> str:
    """``lib 30 stems`` (and ``, 178 segments`` when the status counts them separately)."""
    out = f"lib {lib.get('stems')} stems"
    return out + (f", {lib['segments']} segments" if lib.get("segments") is not None else "")


@guarded("python -m server.listen")
def main(argv=None) -> int:
    ap = Parser(prog="python -m server.listen", description=__doc__)
    ap.add_argument("addr", nargs="?", default=config.DEFAULT_PUB, help="the server's PUB address")
    ap.add_argument("--topics", default="match,beat,status", help="comma-separated topics (match, beat, status)")
    ap.add_argument("--k", type=int, default=3, help="matches shown per instrument")
    ap.add_argument("--json", action="store_true", help="print each message as one JSON line (JSON Lines)")
    ap.add_argument("--count", type=int, default=0, help="exit after this many messages (0: never)")
    ap.add_argument("--timeout", type=float, default=0, help="exit after this many seconds (0: never)")
    ap.add_argument("--curve-keys", default=None, metavar="DIR",
                    help="key directory (server.key + a client key pair) of a server bound beyond loopback "
                    "(default: none, plain TCP)")
    ap.add_argument("--check", action="store_true", help="validate every message against the v1 schema")
    a = ap.parse_args(argv)
    if a.k < 1 or a.count < 0 or a.timeout < 0:
        ap.error("--k must be >= 1, --count and --timeout >= 0")
    why = check_address("address", a.addr)
    if why:
        raise CliError(why, "give the address the server publishes on (its --pub), e.g. tcp://127.0.0.1:5555")
    topics = [t.strip() for t in a.topics.split(",") if t.strip()]
    unknown = [t for t in topics if t not in ("match", "beat", "status")]
    if unknown or not topics:
        ap.error(f"--topics: unknown topic(s) {', '.join(unknown) or '(none given)'}; choose from match, beat, status")
    info = sys.stderr if a.json else sys.stdout
    # an inproc:// endpoint lives in one context: the in-process server's (zmq.Context.instance())
    shared = a.addr.startswith("inproc://")
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    ctx = zmq.Context.instance() if shared else zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    if a.curve_keys:
        from .keys import load_client

        for k, v in load_client(a.curve_keys).items():
            setattr(sub, k, v)
    sub.connect(a.addr)
    for t in topics:
        sub.subscribe(t.encode())
    print(f"listening on {a.addr} topics {topics} (Ctrl-C to quit)", file=info, flush=True)
    n = bad = 0
    t_end = time.monotonic() + a.timeout if a.timeout else None
    try:
        while not stop and (t_end is None or time.monotonic() < t_end):
            if not sub.poll(200):
                continue
            frames = sub.recv_multipart()
            if len(frames) != 2:
                continue
            topic = frames[0].decode("utf-8", "replace")
            try:
                d = json.loads(frames[1])
            except ValueError:
                print(f"{topic}: undecodable message", file=info, flush=True)
                continue
            n += 1
            if a.check:
                errs = P.validate_message(topic, d)
                if errs:
                    bad += 1
                    print(f"SCHEMA {topic}: {errs[:3]}", file=info, flush=True)
            if a.json:
                if isinstance(d, dict):
                    d.setdefault("topic", topic)
                print(json.dumps(d), flush=True)
            elif topic == "match":
                print("\n".join(_fmt_match(d, a.k)), flush=True)
            elif topic == "beat":
                print(_fmt_beat(d), flush=True)
            elif topic == "status":
                print(_fmt_status(d), flush=True)
            if a.count and n >= a.count:
                break
    finally:
        sub.close(0)
        if not shared:
            ctx.term()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
