"""Issue 16, item 6: the protocol as JSON Schema files (server/json_schemas, server/schemas.py):
one per message and per command reply, compatible with what the code sends, accepted for every
live message and reply of a real server (python ``jsonschema``), rejecting broken ones, and used
by the Node subscriber (``--validate``, ``ajv``)."""
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from server import protocol as P
from server.app import Server
from server.schemas import DIR, REPLY_FIELDS, all_schemas
from server.testing import Subscriber, request

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
NODE_DIR = ROOT / "examples" / "max"
HAVE_NODE = shutil.which("node") is not None and (NODE_DIR / "node_modules" / "ajv").is_dir() \
    and (NODE_DIR / "node_modules" / "zeromq").is_dir()


def shipped() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in DIR.glob("*.json")}


def validator(name):
    return jsonschema.Draft202012Validator(shipped()[name])


def _compatible(have: dict, want: dict, path: str, errs: list) -> None:
    """A client validating with ``have`` (shipped) accepts what the code's ``want`` allows:
    nothing required that the code may omit, the same types, every enum value the code may send."""
    for key in ("type", "const"):
        if key in have and have.get(key) != want.get(key):
            errs.append(f"{path}: {key} {have.get(key)!r} != {want.get(key)!r}")
    if "enum" in have and not set(want.get("enum", [])) <= set(have["enum"]):
        errs.append(f"{path}: the code may send {set(want.get('enum', [])) - set(have['enum'])}")
    if "anyOf" in have:
        for i, (h, w) in enumerate(zip(have["anyOf"], want.get("anyOf", []))):
            _compatible(h, w, f"{path}|{i}", errs)
    if have.get("type") == "object":
        extra = set(have.get("required", [])) - set(want.get("required", []))
        if extra:
            errs.append(f"{path}: requires {extra}, which the code does not always send")
        for k, h in have.get("properties", {}).items():
            if k in want.get("properties", {}):
                _compatible(h, want["properties"][k], f"{path}.{k}", errs)
        if "additionalProperties" in have and "additionalProperties" in want:
            _compatible(have["additionalProperties"], want["additionalProperties"], f"{path}.*", errs)
    if have.get("type") == "array" and "items" in have:
        _compatible(have["items"], want.get("items", {}), f"{path}[]", errs)


def test_a_schema_for_every_message_and_reply_compatible_with_the_code():
    files = shipped()
    assert set(files) == {*P.TOPICS, *(f"reply.{c}" for c in Server.COMMANDS), "reply.error"}
    assert set(REPLY_FIELDS) == set(Server.COMMANDS)
    for name, s in files.items():
        jsonschema.Draft202012Validator.check_schema(s)
    errs = []
    for name, want in all_schemas().items():
        _compatible(files[name[:-5]], want, name, errs)
    assert not errs, "shipped schemas are out of date (python -m server.schemas): " + "; ".join(errs[:8])
    assert "server/json_schemas" in (ROOT / "docs" / "protocol.md").read_text()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live(server_assets):
    """A real server (micro model) replaying a synthetic track in a loop."""
    pub, ctl = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    p = subprocess.Popen([sys.executable, "-m", "server", *server_assets.cli_args(), "--input",
                          str(server_assets.dataset / "track0" / "mixture.wav"), "--loop", "--instruments",
                          "drum kit,electric bass", "--pub", pub, "--ctl", ctl], cwd=ROOT, env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx = zmq.Context()
    sub = Subscriber(ctx, pub)
    sub.poll(90, until=lambda t, m: t == "status" and len(sub.of("match")) > 10)
    yield {"pub": pub, "ctl": ctl, "ctx": ctx, "sub": sub, "assets": server_assets}
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=30)
    sub.close()
    ctx.term()


@pytest.mark.slow
def test_live_messages_and_replies_match_the_shipped_schemas(live):
    sub = live["sub"]
    sub.poll(3.0)
    for topic in P.TOPICS:
        v = validator(topic)
        msgs = sub.of(topic)
        assert msgs, topic
        for m in msgs:
            errs = [e.message for e in v.iter_errors(m)]
            assert not errs, (topic, errs[:3])
    # broken messages are refused
    m = copy.deepcopy(sub.of("match")[-1])
    bad = [{k: v for k, v in m.items() if k != "seq"}, {**m, "v": 2}, {**m, "level_db": "loud"},
           {**m, "matches": {"drums": [{"rank": 0}]}}]
    for b in bad:
        assert not validator("match").is_valid(b), b
    b = copy.deepcopy(sub.of("beat")[-1])
    b["phase"] = 1.5
    assert not validator("beat").is_valid(b)
    # every command's reply, and the error reply
    lib = str(live["assets"].library_small)
    args = {"set_instruments": {"instruments": ["drum kit", "electric bass"]}, "set_k": {"k": 3},
            "set_hop": {"ms": 160}, "restrict_category": {"enabled": False}, "set_library": {"path": lib},
            "set_midi": {"channel": 10}}
    seen_error = False
    for cmd in Server.COMMANDS:
        r = request(live["ctx"], live["ctl"], {"cmd": cmd, "id": 7, **args.get(cmd, {})}, timeout_s=30)
        name = f"reply.{cmd}" if r["ok"] else "reply.error"
        seen_error |= not r["ok"]
        errs = [e.message for e in validator(name).iter_errors(r)]
        assert not errs, (cmd, r, errs[:3])
        assert r.get("id") == 7
    for raw in (b"not json", json.dumps({"cmd": "nope"}).encode(), json.dumps({"cmd": "set_k", "k": "x"}).encode()):
        r = request(live["ctx"], live["ctl"], None, raw=raw)
        assert not r["ok"] and validator("reply.error").is_valid(r), r
    assert not validator("reply.error").is_valid({"ok": False, "error": {"code": "made_up", "message": "x"}})
    assert not validator("reply.set_k").is_valid({"ok": True, "cmd": "set_k", "k": 0})


@pytest.mark.skipif(not HAVE_NODE, reason="node or examples/max/node_modules (zeromq, ajv) missing "
                                          "(scripts/setup_system.sh installs them)")
@pytest.mark.slow
def test_node_subscriber_validates_against_the_schemas(live):
    r = subprocess.run(["node", str(NODE_DIR / "subscriber.js"), live["pub"], "--ctl", live["ctl"], "--ping",
                        "--count", "25", "--timeout", "30", "--validate"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "invalid" not in r.stderr and r.stdout.count("\n") >= 20
    # a publisher that sends a broken message: the subscriber says so and exits 3
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    node = subprocess.Popen(["node", str(NODE_DIR / "subscriber.js"), f"tcp://127.0.0.1:{port}", "--count", "3",
                             "--timeout", "20", "--validate"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    good = live["sub"].of("beat")[-1]
    t_end = time.monotonic() + 20
    while node.poll() is None and time.monotonic() < t_end:
        for msg in (good, {**good, "tempo": "fast"}):
            pub.send_multipart([b"beat", json.dumps(msg).encode()])
        time.sleep(0.05)
    out, err = node.communicate(timeout=10)
    pub.close(0)
    ctx.term()
    assert node.returncode == 3 and "invalid beat" in err and "/tempo" in err, (node.returncode, err[-1000:])
