"""Port choice for services that must not collide with whatever else runs on the machine.

A port found free here is released before the service binds it, so there is a small race;
for a developer machine and CI that is an accepted trade for not needing fixed ports.
"""

from __future__ import annotations

import socket

HOST = "127.0.0.1"


def _bind(host: str, port: int) -> socket.socket:
    # SO_REUSEADDR as the servers themselves use it: a port left in TIME_WAIT by the
    # previous run is reusable, a port with a listener is not.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def is_free(port: int, host: str = HOST) -> bool:
    try:
        _bind(host, port).close()
    except OSError:
        return False
    return True


def free_port(host: str = HOST) -> int:
    with _bind(host, 0) as sock:
        return sock.getsockname()[1]


def free_ports(count: int, host: str = HOST) -> list[int]:
    """Several distinct ports at once: holding each socket until all are chosen keeps the
    kernel from handing out the same port twice."""
    socks = [_bind(host, 0) for _ in range(count)]
    try:
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_pair(offset: int, host: str = HOST, attempts: int = 200) -> int:
    """A port P such that P + offset is free too: some SeaweedFS parts dial
    `HTTP port + 10000` for gRPC regardless of the configured gRPC port."""
    for _ in range(attempts):
        port = free_port(host)
        if port + offset <= 65535 and is_free(port + offset, host):
            return port
    raise OSError(f"no free port P with P+{offset} also free on {host}")


def port_or_free(preferred: int, host: str = HOST) -> int:
    return preferred if is_free(preferred, host) else free_port(host)
