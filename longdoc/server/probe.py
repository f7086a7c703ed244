"""Reaching a server from this machine: free ports, the readiness probe."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now (tests; racy by nature, good enough on one machine)."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct free ports: all sockets stay open until all are picked."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "[::1]"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


# Probes must not go through an HTTP(S)_PROXY from the environment.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def is_ready(http_url: str, timeout: float = 2.0, headers: Mapping[str, str] | None = None) -> bool:
    """True if `GET /v2/health/ready` answers 200 (all models loaded, server live).

    `headers`: the admin key, where `health` is behind it (`lockdown.probe_headers`).
    """
    url = http_url if "://" in http_url else f"http://{http_url}"
    request = urllib.request.Request(f"{url}/v2/health/ready", headers=dict(headers or {}))
    try:
        with _NO_PROXY_OPENER.open(request, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(
    http_url: str,
    timeout: float = 120.0,
    *,
    interval: float = 0.2,
    alive: Callable[[], bool] | None = None,
    headers: Mapping[str, str] | None = None,
) -> bool:
    """Poll readiness until it answers 200 (True) or `timeout` passes (False).

    `alive` lets the caller stop waiting as soon as the server process is gone.
    """
    deadline = time.monotonic() + timeout
    while True:
        remaining = max(0.1, min(2.0, deadline - time.monotonic()))
        if is_ready(http_url, timeout=remaining, headers=headers):
            return True
        if alive is not None and not alive():
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
