"""``python -m server.keys DIR``: generate CURVE key pairs for a server bound beyond loopback.

Writes ``DIR/server.key`` (public, give it to clients), ``DIR/server.key_secret`` (keep it on the
server), ``DIR/client.key`` + ``DIR/client.key_secret`` (one client identity), and copies the client's
public key into ``DIR/authorized_clients/`` (the server then accepts only keys found there; delete
the folder to accept any client that knows the server key).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m server.keys", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--client-name", default="client")
    a = ap.parse_args(argv)
    out = generate(a.dir, a.client_name)
    for k, v in out.items():
        print(f"{k}: {v}")
    print(f"start the server with --curve-keys {a.dir}; clients use {out['server_public']} and their own key pair")
    return 0


if __name__ == "__main__":
    sys.exit(main())
