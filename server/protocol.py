"""Wire protocol v1: message schemas, a small validator, error codes, control-request parsing.

Published messages are multipart ``[topic, json]`` on a PUB socket; control requests and replies
are single JSON frames on a ROUTER socket (REQ or DEALER clients). docs/protocol.md documents
every field; the schemas below are the machine-checkable form of that page and the tests hold
every message the server sends to them.
"""
from __future__ import annotations

import json
import math
from typing import Any

VERSION = 1
TOPICS = ("match", "beat", "status")

# ---------------------------------------------------------------------------- error codes
E_BAD_FRAMES = "bad_frames"  # request was not exactly one frame of payload
E_TOO_LARGE = "too_large"  # request larger than MAX_CTL_BYTES
E_BAD_JSON = "bad_json"  # not UTF-8 JSON
E_BAD_REQUEST = "bad_request"  # JSON, but not an object with a string "cmd"
E_UNKNOWN_CMD = "unknown_cmd"
E_BAD_ARGS = "bad_args"  # missing / wrong-typed / out-of-range argument
E_NOT_FOUND = "not_found"  # a file named by the request does not exist
E_LIBRARY = "library_error"  # library could not be loaded (corrupt, other model's fingerprint)
E_UNAVAILABLE = "unavailable"  # feature not available in this server (e.g. MIDI off)
E_INTERNAL = "internal"  # the engine raised; the server keeps running
E_BUSY = "busy"  # too many slow requests (set_library / set_instruments) already in progress

ERROR_CODES = (E_BAD_FRAMES, E_TOO_LARGE, E_BAD_JSON, E_BAD_REQUEST, E_UNKNOWN_CMD, E_BAD_ARGS,
               E_NOT_FOUND, E_LIBRARY, E_UNAVAILABLE, E_INTERNAL, E_BUSY)


class ProtocolError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def error_reply(code: str, message: str, req_id: Any = None) -> dict:
    r = {"ok": False, "error": {"code": code, "message": str(message)[:500]}}
    if req_id is not None:
        r["id"] = req_id
    return r


def dumps(obj: dict) -> bytes:
    """Compact JSON; NaN/Inf are never emitted (replaced by null) so every parser reads it."""
    return json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False).encode("utf-8")


def _finite(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if hasattr(x, "item") and hasattr(x, "dtype"):  # numpy scalar
        return _finite(x.item())
    if hasattr(x, "tolist"):  # numpy array
        return _finite(x.tolist())
    return x


def _no_constant(name: str):
    """NaN, Infinity and -Infinity are not JSON (RFC 8259); Python's parser accepts them by default."""
    raise ValueError(f"{name} is not a JSON value")


def parse_request(frames: list[bytes], max_bytes: int) -> dict:
    """Body frames of one control request -> the request object (raises ProtocolError)."""
    if len(frames) != 1:
        raise ProtocolError(E_BAD_FRAMES, f"expected exactly 1 JSON frame, got {len(frames)}")
    raw = frames[0]
    if len(raw) > max_bytes:
        raise ProtocolError(E_TOO_LARGE, f"request of {len(raw)} bytes exceeds {max_bytes}")
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(E_BAD_JSON, f"request is not UTF-8 JSON: {str(e)[:120]}")
    if not isinstance(obj, dict):
        raise ProtocolError(E_BAD_REQUEST, f"request must be a JSON object, got {type(obj).__name__}")
    cmd = obj.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError(E_BAD_REQUEST, 'request needs a string field "cmd"')
    return obj


# ---------------------------------------------------------------------------- argument helpers
def arg(req: dict, name: str, kind, *, lo=None, hi=None, required=True, default=None):
    """Typed argument with range check; raises ProtocolError(E_BAD_ARGS)."""
    if name not in req:
        if required:
            raise ProtocolError(E_BAD_ARGS, f'missing argument "{name}"')
        return default
    v = req[name]
    if kind is int:
        ok = isinstance(v, int) and not isinstance(v, bool)
        if not ok and isinstance(v, float) and v.is_integer():
            v, ok = int(v), True
    elif kind is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        v = float(v) if ok else v
    else:
        ok = isinstance(v, kind)
    if not ok:
        raise ProtocolError(E_BAD_ARGS, f'"{name}" must be {getattr(kind, "__name__", kind)}, got {type(v).__name__}')
    if lo is not None and v < lo or hi is not None and v > hi:
        raise ProtocolError(E_BAD_ARGS, f'"{name}" = {v} is out of range [{lo}, {hi}]')
    return v


# ---------------------------------------------------------------------------- validator
class Spec:
    def check(self, v, path: str, errs: list) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class Num(Spec):
    def __init__(self, lo=None, hi=None, null=False, integer=False):
        self.lo, self.hi, self.null, self.integer = lo, hi, null, integer

    def check(self, v, path, errs):
        if v is None:
            if not self.null:
                errs.append(f"{path}: null not allowed")
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (self.integer and not isinstance(v, int)):
            errs.append(f"{path}: expected {'integer' if self.integer else 'number'}, got {type(v).__name__}")
            return
        if isinstance(v, float) and not math.isfinite(v):
            errs.append(f"{path}: not finite")
        if self.lo is not None and v < self.lo:
            errs.append(f"{path}: {v} < {self.lo}")
        if self.hi is not None and v > self.hi:
            errs.append(f"{path}: {v} > {self.hi}")


def Int(lo=None, hi=None, null=False):
    return Num(lo, hi, null, integer=True)


class Str(Spec):
    def __init__(self, enum=None, null=False, nonempty=False):
        self.enum, self.null, self.nonempty = enum, null, nonempty

    def check(self, v, path, errs):
        if v is None and self.null:
            return
        if not isinstance(v, str):
            errs.append(f"{path}: expected string, got {type(v).__name__}")
        elif self.enum is not None and v not in self.enum:
            errs.append(f"{path}: {v!r} not in {self.enum}")
        elif self.nonempty and not v:
            errs.append(f"{path}: empty string")


class Bool(Spec):
    def __init__(self, null: bool = False):
        self.null = null

    def check(self, v, path, errs):
        if v is None and self.null:
            return
        if not isinstance(v, bool):
            errs.append(f"{path}: expected bool, got {type(v).__name__}")


class Const(Spec):
    def __init__(self, value):
        self.value = value

    def check(self, v, path, errs):
        if v != self.value or type(v) is not type(self.value):
            errs.append(f"{path}: expected {self.value!r}, got {v!r}")


class Any_(Spec):
    def check(self, v, path, errs):
        pass


class List(Spec):
    def __init__(self, item: Spec, min_len=0, max_len=None, null=False):
        self.item, self.min_len, self.max_len, self.null = item, min_len, max_len, null

    def check(self, v, path, errs):
        if v is None and self.null:
            return
        if not isinstance(v, list):
            errs.append(f"{path}: expected list, got {type(v).__name__}")
            return
        if len(v) < self.min_len or (self.max_len is not None and len(v) > self.max_len):
            errs.append(f"{path}: length {len(v)} outside [{self.min_len}, {self.max_len}]")
        for i, x in enumerate(v):
            self.item.check(x, f"{path}[{i}]", errs)


class Map(Spec):
    """Object with arbitrary string keys, every value matching ``value``."""

    def __init__(self, value: Spec):
        self.value = value

    def check(self, v, path, errs):
        if not isinstance(v, dict):
            errs.append(f"{path}: expected object, got {type(v).__name__}")
            return
        for k, x in v.items():
            self.value.check(x, f"{path}.{k}", errs)


class Obj(Spec):
    """Object with named fields: ``required`` must be present, ``optional`` may be; other keys
    are allowed only when ``extra`` (forward compatibility: v1 readers ignore unknown keys, but
    the server's own messages are checked strictly)."""

    def __init__(self, required: dict, optional: dict | None = None, extra=False, null=False):
        self.required, self.optional, self.extra, self.null = required, optional or {}, extra, null

    def check(self, v, path, errs):
        if v is None and self.null:
            return
        if not isinstance(v, dict):
            errs.append(f"{path}: expected object, got {type(v).__name__}")
            return
        for k, spec in self.required.items():
            if k not in v:
                errs.append(f"{path}: missing field {k!r}")
            else:
                spec.check(v[k], f"{path}.{k}", errs)
        for k, spec in self.optional.items():
            if k in v:
                spec.check(v[k], f"{path}.{k}", errs)
        if not self.extra:
            for k in v:
                if k not in self.required and k not in self.optional:
                    errs.append(f"{path}: unexpected field {k!r}")


def validate(obj, spec: Spec, path: str = "$") -> list[str]:
    errs: list[str] = []
    spec.check(obj, path, errs)
    return errs


# ---------------------------------------------------------------------------- message schemas
def _header(topic: str, latency_null: bool = False) -> dict:
    return {
        "v": Const(VERSION),
        "topic": Const(topic),
        "seq": Int(0),  # per topic, +1 per message published on that topic
        "stream_time": Num(0),  # s: stream position of the hop's last sample
        "wall_time": Num(1e9),  # unix s when the message was stamped for sending
        "latency_ms": Num(0, null=latency_null),  # ms: last sample in the ring -> send
    }


MATCH_ITEM = Obj({
    "rank": Int(1),
    "stem_id": Str(),
    "track_id": Str(),
    "label": Str(),
    "category": Str(),
    "offset": Num(0),  # s: position in the stem the window matches best
    "score": Num(),  # similarity, higher is better
    # playable fields (server/cues.py); null where the library or the tracker cannot tell
    "path": Str(null=True),  # audio file relative to status.library.audio_root
    "file": Str(null=True),  # the same, absolute
    "length": Num(0, null=True),  # s: the segment's length
    "stem_tempo": Num(0, null=True),  # BPM: the stem's own tempo (library build)
    "grid": Obj({"tempo": Num(0), "period_s": Num(0), "first_beat": Num(0), "n_beats": Int(0),
                 "first_downbeat": Num(0), "beats_per_bar": Int(1), "confidence": Num(0, 1),
                 "scope": Str(enum=("stem", "track"))}, null=True),
    "stretch": Num(0, null=True),  # playback rate to the live tempo
    "cue": Obj({"stem_pos": Num(0), "stream_time": Num(), "wall_time": Num(), "beat": Int()}, null=True),
})

MATCH = Obj({
    **_header("match"),
    "hop": Int(0),  # hop index since the stream (re)started, dropped hops included
    "ready": Bool(),  # False while the window is shorter than the matcher's minimum (no matches)
    "signal": Bool(),  # False: the window is below the signal threshold (silence): no matches
    "level_db": Num(-200, 20),  # dBFS RMS of the window's audio
    "k": Int(1),
    "instruments": List(Str(nonempty=True)),
    "matches": Map(List(MATCH_ITEM)),
    "timings_ms": Map(Num(0)),
})

BEAT = Obj({
    **_header("beat"),
    "hop": Int(0),
    "signal": Bool(),  # False: silence -- tempo, phase and next beats are null/empty, confidence 0
    "level_db": Num(-200, 20),  # dBFS RMS of this hop's audio
    "window_level_db": Num(-200, 20),  # dBFS RMS of the window's audio (the level `signal` is decided on)
    "no_beat": Bool(),  # the tracker hears no beat (or no signal): no tempo, forecast, bar or beats
    "beat_presence": Num(0, 1),  # the tracker's mass outside its no-beat state
    "tempo": Num(0, null=True),  # BPM, null while unknown
    "phase": Num(0, 1, null=True),  # position within the current beat, [0, 1)
    "period_s": Num(0, null=True),  # 60 / tempo
    "last_beat": Num(null=True),  # stream s of the latest beat
    "next_beats": List(Num()),  # stream s of predicted beats, ascending
    "next_beats_wall": List(Num()),  # the same, as unix s
    "next_beats_number": List(Int()),  # their live beat numbers (as cue.beat); empty before the first beat
    "live_meter": Int(1),  # beats per bar of those numbers: a number divisible by it is a downbeat
    "beats_in_hop": List(Num()),  # stream s of beats detected inside this hop
    "confidence": Num(0, 1, null=True),  # calibrated: about the fraction of beats at it that are right
    "meter": Int(1),  # beats per bar of the likelier meter (3 or 4)
    "meter_confidence": Num(0, 1),
    "beat_in_bar": Int(0, null=True),  # the current beat's place in its bar, 0 = downbeat
    "bar_phase": Num(0, 1, null=True),  # position within the bar, [0, 1)
    "bar_confidence": Num(0, 1),  # share of the tracker's mass on this meter and place
    "next_downbeat": Num(null=True),  # stream s of the next predicted downbeat
    "next_downbeat_wall": Num(null=True),  # the same, as unix s
    "downbeats_in_hop": List(Num()),  # those of beats_in_hop that are downbeats
    "activation": List(Num(0, 1)),  # beat activation frames of this hop, 50 Hz, oldest first
    "activation_rate": Num(0),  # Hz
    "activation_time": Num(null=True),  # stream s of activation[0]
})

_COUNTERS = Obj({
    "hops": Int(0),  # hops processed
    "drops": Int(0),  # hops skipped because the worker was late (latest wins)
    "overruns": Int(0),  # audio overwritten before it was read
    "capture_overruns": Int(0),
    "published": Map(Int(0)),  # per topic
    "ctl_requests": Int(0),
    "ctl_errors": Int(0),
    "hop_errors": Int(0),
    "nonfinite": Int(0),  # input samples that were NaN/Inf (zeroed)
    "restarts": Int(0),  # front-end restarts after a gap in the input
    "stalls": Int(0),  # times the watchdog found the hop worker stuck
    "curve_denied": Int(0),  # peers that failed the CURVE handshake
    "busy": Int(0),  # slow requests refused because MAX_PENDING_JOBS were in progress
    "input_stalls": Int(0),  # times the sound card delivered nothing for INPUT_TIMEOUT_S
    "input_reopens": Int(0),  # times the input stream was reopened after a stall or loss
    "input_glitches": Int(0),  # PortAudio overflow / underflow flags seen by the callback
}, extra=True)

_LAT = Obj({"p50": Num(0, null=True), "p99": Num(0, null=True), "max": Num(0, null=True),
            "mean": Num(0, null=True), "n": Int(0)})

STATUS = Obj({
    **_header("status", latency_null=True),
    "state": Str(enum=("running", "paused", "finished", "stalled")),
    "uptime_s": Num(0),
    "backend": Str(),
    "device": Str(),
    "input": Obj({"kind": Str(enum=("device", "file", "none")), "name": Str(), "rate": Num(0),
                  "speed": Num(0, null=True), "loop": Bool()},
                 # a sound card: "ok", "stalled" (nothing for INPUT_TIMEOUT_S) or "lost" (stream closed)
                 optional={"state": Str(enum=("ok", "stalled", "lost"))}),
    "instruments": List(Str()),
    "k": Int(1),
    "hop_ms": Num(0),
    "restrict_category": Bool(),
    # "model+keytempo": the model's cosine fused with the tempo + key descriptor's at keytempo_weight
    "ranking": Obj({"mode": Str(enum=("model", "model+keytempo")), "keytempo_weight": Num(0, 1)}),
    # True: the streaming encoder path (a causal model: only the new columns are computed each hop)
    "streaming": Bool(),
    "library": Obj({"audio_root": Str(null=True), "path": Str(), "stems": Int(0), "segments": Int(0), "tracks": Int(0, null=True),
                    "roots": List(Str())}, extra=True),
    "subscriptions": Int(0),  # live subscriptions on the PUB socket (a subscriber has one per topic)
    "counters": _COUNTERS,
    "latency_ms": Num(0, null=True),
    "signal": Bool(null=True),  # of the latest hop (null before the first)
    "level_db": Num(-200, 20, null=True),  # dBFS RMS of the latest hop's window
    "no_beat": Bool(null=True),  # the latest beat message's no_beat (null before the first)
    "latency": _LAT,
    "timings_ms": Map(Num(0)),
    "midi": Obj({"enabled": Bool(), "port": Str(null=True), "channel": Int(1, 16), "note": Int(0, 127),
                 "clocks": Int(0), "notes": Int(0), "error": Str(null=True),
                 # what the clock does without a beat; whether it runs (Start sent, no Stop since)
                 "no_beat": Str(enum=("hold", "stop")), "running": Bool(), "starts": Int(0), "stops": Int(0)}),
    "pub": Str(),
    "ctl": Str(),
    "protocol": Const(VERSION),
})

SCHEMAS = {"match": MATCH, "beat": BEAT, "status": STATUS}

REPLY_OK = Obj({"ok": Const(True)}, extra=True)
REPLY_ERR = Obj({"ok": Const(False), "error": Obj({"code": Str(enum=ERROR_CODES), "message": Str()})},
                optional={"id": Any_()})


def validate_message(topic: str, obj) -> list[str]:
    spec = SCHEMAS.get(topic)
    if spec is None:
        return [f"unknown topic {topic!r}"]
    errs = validate(obj, spec)
    if isinstance(obj, dict) and obj.get("topic") != topic:
        errs.append(f"topic frame {topic!r} != field {obj.get('topic')!r}")
    return errs


def validate_reply(obj) -> list[str]:
    if isinstance(obj, dict) and obj.get("ok") is True:
        return validate(obj, REPLY_OK)
    return validate(obj, REPLY_ERR)
