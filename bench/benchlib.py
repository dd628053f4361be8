"""Helpers shared by the bench scripts: a free local port, the emulator's control API, and
the BLAKE2b of a file (how every bench checks bytes against their source)."""

import hashlib
import json
import socket
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emu(url, path, post=False):
    """GET (or POST) one of `cargoship emulate`'s /__emulator/ endpoints; its JSON, if any."""
    req = urllib.request.Request(url + path, method="POST" if post else "GET")
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = resp.read()
    return json.loads(body) if body else None


def file_hash(path):
    h = hashlib.blake2b()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()
