"""Where the server may listen, and with which keys: the loopback check of every bind address,
IPv6 literals, and the CURVE key pair from a directory made by ``python -m server.keys``.
``ConfigError`` is the error of a configuration the server refuses to start with."""
from __future__ import annotations

import ipaddress
from pathlib import Path

from . import config


class ConfigError(RuntimeError):
    """A configuration the server refuses to start with (message is for the user)."""


def is_local_address(addr: str) -> bool:
    """True for inproc://, ipc:// and tcp:// on a loopback interface."""
    if addr.startswith(("inproc://", "ipc://")):
        return True
    if not addr.startswith("tcp://"):
        return False
    host = addr[len("tcp://"):].rsplit(":", 1)[0]
    if ";" in host:  # "source;dest" syntax (connect only)
        return False
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", interface names, hostnames


def load_curve_server(keys_dir: str | Path) -> tuple[bytes, bytes, Path | None]:
    """(public, secret, authorized_clients_dir or None) from a directory made by server.keys."""
    import zmq.auth

    d = Path(keys_dir)
    sec = d / config.CURVE_SERVER_SECRET
    if not sec.is_file():
        raise ConfigError(f"CURVE: {sec} not found; generate keys with `python -m server.keys {d}`")
    try:
        public, secret = zmq.auth.load_certificate(str(sec))
    except Exception as e:
        raise ConfigError(f"CURVE: cannot read {sec}: {e}")
    if not secret:
        raise ConfigError(f"CURVE: {sec} holds no secret key")
    auth = d / config.CURVE_AUTHORIZED_DIR
    return public, secret, (auth if auth.is_dir() else None)


def _is_ipv6(addr: str) -> bool:
    """A tcp:// address whose host is an IPv6 literal (libzmq binds it only with ZMQ_IPV6 on)."""
    return addr.startswith("tcp://") and addr[len("tcp://"):].startswith("[")
