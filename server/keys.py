"""``python -m server.keys DIR``: generate CURVE key pairs for a server bound beyond loopback.

Writes ``DIR/server.key`` (public, give it to clients), ``DIR/server.key_secret`` (keep it on the
server), ``DIR/client.key`` + ``DIR/client.key_secret`` (one client identity), and copies the client's
public key into ``DIR/authorized_clients/`` (the server then accepts only keys found there; delete
the folder to accept any client that knows the server key).
"""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from engine.cli import CliError, Parser, guarded

from . import config


def generate(d: str | Path, client_name: str = "client") -> dict:
    import zmq.auth

    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    spub, ssec = zmq.auth.create_certificates(str(d), "server")
    cpub, csec = zmq.auth.create_certificates(str(d), client_name)
    auth = d / config.CURVE_AUTHORIZED_DIR
    auth.mkdir(exist_ok=True)
    shutil.copy(cpub, auth / Path(cpub).name)
    for p in (ssec, csec):
        Path(p).chmod(0o600)
    return {"server_public": spub, "server_secret": ssec, "client_public": cpub, "client_secret": csec}


def load_client(d: str | Path) -> dict:
    """Socket options a client needs: {curve_serverkey, curve_publickey, curve_secretkey}."""
    import zmq.auth

    d = Path(d)
    spub, _ = zmq.auth.load_certificate(str(d / config.CURVE_SERVER_PUBLIC))
    cpub, csec = zmq.auth.load_certificate(str(d / config.CURVE_CLIENT_SECRET))
    return {"curve_serverkey": spub, "curve_publickey": cpub, "curve_secretkey": csec}


@guarded("python -m server.keys")
def main(argv=None) -> int:
    ap = Parser(prog="python -m server.keys", description=__doc__)
    ap.add_argument("dir", help="folder to write the keys into (created if missing)")
    ap.add_argument("--client-name", default="client", help="file name of the client key pair")
    a = ap.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", a.client_name) or a.client_name in ("server", ".", ".."):
        ap.error(f"--client-name {a.client_name!r}: use letters, digits, '.', '_' or '-' (and not 'server')")
    d = Path(a.dir)
    if d.exists() and not d.is_dir():
        raise CliError(f"{d}: exists and is not a folder", "give a folder for the keys")
    if (d / config.CURVE_SERVER_SECRET).exists():
        raise CliError(f"{d}: already holds a server key ({config.CURVE_SERVER_SECRET}); not overwritten",
                       "keep it, or give another folder (clients would need the new server key)")
    out = generate(a.dir, a.client_name)
    for k, v in out.items():
        print(f"{k}: {v}")
    print(f"start the server with --curve-keys {a.dir}; clients use {out['server_public']} and their own key pair")
    return 0


if __name__ == "__main__":
    sys.exit(main())
