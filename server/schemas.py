"""JSON Schema (draft 2020-12) files for every published message and every control reply.

The schemas are generated from the validator specs of :mod:`server.protocol` (``SCHEMAS``,
the form the server's own tests hold every message to) plus the per-command reply specs below,
and shipped in ``server/json_schemas/``:

* ``match.json``, ``beat.json``, ``status.json`` -- the published messages;
* ``reply.<cmd>.json`` for every command, ``reply.error.json`` for every failure.

Every field docs/protocol.md lists is required with its type, range and enumeration; fields
beyond those are allowed (v1 readers ignore what they do not know, so a client validating with
these files keeps working against a newer v1 server). The server's own tests hold its messages to
the strict form in :mod:`server.protocol`.

``python -m server.schemas`` rewrites the folder after a change to the specs; ``--check`` exits 1
when the shipped files differ from what the code generates. Any JSON
Schema validator reads them: ``jsonschema`` in Python, ``ajv`` in Node (examples/max/subscriber.js
``--validate``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import protocol as P
from .protocol import Any_, Bool, Const, Int, List, Map, Num, Obj, Str

DIR = Path(__file__).resolve().parent / "json_schemas"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

_MIDI = Obj({"enabled": Bool(), "port": Str(null=True), "channel": Int(1, 16), "note": Int(0, 127),
             "clocks": Int(0), "notes": Int(0)}, extra=True)
_LIBRARY = Obj({"path": Str(), "stems": Int(0), "tracks": Int(0, null=True)}, extra=True)
_STATE = Str(enum=("running", "paused", "finished", "stalled"))

#: command -> the fields of its success reply beyond ``ok`` and ``cmd``
REPLY_FIELDS = {
    "ping": {"pong": Const(True), "wall_time": Num(1e9), "protocol": Const(P.VERSION)},
    "help": {"commands": List(Str(nonempty=True), 1), "topics": List(Str(enum=P.TOPICS), 1),
             "protocol": Const(P.VERSION)},
    "status": {"status": P.STATUS},
    "get_instruments": {"instruments": List(Str(nonempty=True))},
    "set_instruments": {"instruments": List(Str(nonempty=True), 1)},
    "get_k": {"k": Int(1)},
    "set_k": {"k": Int(1)},
    "set_hop": {"ms": Num(0)},
    "set_library": {"library": _LIBRARY},
    "restrict_category": {"enabled": Bool()},
    "set_ranking": {"ranking": Obj({"mode": Str(enum=("model", "model+keytempo")), "keytempo_weight": Num(0, 1)})},
    "pause": {"state": _STATE},
    "resume": {"state": _STATE},
    "reset": {"state": _STATE},
    "set_midi": {"midi": _MIDI},
}


def reply_spec(cmd: str) -> Obj:
    return Obj({"ok": Const(True), "cmd": Const(cmd), **REPLY_FIELDS[cmd]}, optional={"id": Any_()}, extra=True)


def to_json_schema(spec) -> dict:
    """One :mod:`server.protocol` spec as a JSON Schema fragment."""
    def nullable(s: dict, null: bool) -> dict:
        return {"anyOf": [s, {"type": "null"}]} if null else s

    if isinstance(spec, Num):
        s = {"type": "integer" if spec.integer else "number"}
        if spec.lo is not None:
            s["minimum"] = spec.lo
        if spec.hi is not None:
            s["maximum"] = spec.hi
        return nullable(s, spec.null)
    if isinstance(spec, Str):
        s = {"type": "string"}
        if spec.enum is not None:
            s["enum"] = list(spec.enum)
        if spec.nonempty:
            s["minLength"] = 1
        return nullable(s, spec.null)
    if isinstance(spec, Bool):
        return nullable({"type": "boolean"}, spec.null)
    if isinstance(spec, Const):
        return {"const": spec.value}
    if isinstance(spec, Any_):
        return {}
    if isinstance(spec, List):
        s = {"type": "array", "items": to_json_schema(spec.item)}
        if spec.min_len:
            s["minItems"] = spec.min_len
        if spec.max_len is not None:
            s["maxItems"] = spec.max_len
        return nullable(s, spec.null)
    if isinstance(spec, Map):
        return {"type": "object", "additionalProperties": to_json_schema(spec.value)}
    if isinstance(spec, Obj):
        props = {k: to_json_schema(v) for k, v in {**spec.required, **spec.optional}.items()}
        s = {"type": "object", "properties": props, "required": list(spec.required)}  # open: see above
        return nullable(s, spec.null)
    raise TypeError(f"no JSON Schema form for {type(spec).__name__}")


def all_schemas() -> dict[str, dict]:
    """{file name: schema} for every message and every reply."""
    out = {}

    def doc(name: str, title: str, spec) -> None:
        out[name] = {"$schema": DRAFT, "$id": f"stemjepa-live/protocol/v{P.VERSION}/{name}", "title": title,
                     **to_json_schema(spec)}

    for topic, spec in P.SCHEMAS.items():
        doc(f"{topic}.json", f"'{topic}' message (protocol v{P.VERSION}, docs/protocol.md)", spec)
    for cmd in REPLY_FIELDS:
        doc(f"reply.{cmd}.json", f"reply to '{cmd}' (protocol v{P.VERSION}, docs/protocol.md, Control)", reply_spec(cmd))
    doc("reply.error.json", f"reply to a failed request (protocol v{P.VERSION}, docs/protocol.md, Error codes)",
        P.REPLY_ERR)
    return out


def render(schema: dict) -> str:
    return json.dumps(schema, indent=1, sort_keys=False) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m server.schemas", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when the shipped files differ from the code")
    ap.add_argument("--dir", default=str(DIR), help="folder of the schema files (default: server/json_schemas)")
    a = ap.parse_args(argv)
    d = Path(a.dir)
    want = {k: render(v) for k, v in all_schemas().items()}
    if a.check:
        have = {p.name: p.read_text() for p in d.glob("*.json")} if d.is_dir() else {}
        stale = sorted(k for k in want if have.get(k) != want[k]) + sorted(set(have) - set(want))
        if stale:
            print(f"out of date in {d}: {', '.join(stale)}; run python -m server.schemas", file=sys.stderr)
            return 1
        return 0
    d.mkdir(parents=True, exist_ok=True)
    for p in d.glob("*.json"):
        if p.name not in want:
            p.unlink()
    for k, v in want.items():
        (d / k).write_text(v)
    print(f"{len(want)} schemas -> {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
