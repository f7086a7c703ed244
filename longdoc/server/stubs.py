"""Watching the Python-backend stubs of a running tritonserver, and stopping a server that
lost one: a dead, stopped or "not healthy" stub is a reason to restart at once (a stub
Triton cannot restart fails every request routed to its model until the server goes)."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from longdoc.server.process import ServerHandle

# A stub that stays stopped (SIGSTOP, state T) this long is treated as dead: Triton's health
# check declares it "not healthy" after ~3 s and fails every request routed to it, the stub
# exits when it is continued, and Triton neither restarts it nor can unload its model.
STOPPED_STUB_GRACE_S = 2.0
# Triton's own word that a stub is gone (its log); the supervisor restarts at once on it.
UNHEALTHY_STUB = re.compile(r"Stub process '?([\w.-]+)'? is not healthy")
# How long a server with a dead stub may drain before it is killed: tritonserver would
# otherwise wait its whole --exit-timeout for the model it cannot unload (20 s by default),
# and every request of the dead model fails anyway. Clients retry what was not run.
DEAD_STUB_DRAIN_S = 2.0


def backend_stubs(pid: int) -> dict[int, str]:
    """The Python-backend stub processes under tritonserver ``pid``: {pid: instance name}.

    Triton 2.51 neither restarts a stub that dies nor marks its model unready
    (triton-inference-server/server#8604), so the supervisor watches them itself.
    """
    import psutil

    stubs: dict[int, str] = {}
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return stubs
    for child in children:
        try:
            if child.name().startswith("triton_python"):
                args = child.cmdline()
                stubs[child.pid] = args[-2] if len(args) >= 2 else child.name()
        except psutil.ZombieProcess:  # died before we looked: Triton never reaps it
            stubs[child.pid] = f"(pid {child.pid})"
        except psutil.Error:
            continue
    return stubs


def dead_stubs(stubs: dict[int, str]) -> list[str]:
    """Instance names of the stubs in ``stubs`` that are gone or zombies."""
    import psutil

    dead = []
    for pid, name in stubs.items():
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                dead.append(name)
        except psutil.NoSuchProcess:
            dead.append(name)
        except psutil.Error:
            continue
    return dead


def stopped_stubs(stubs: dict[int, str]) -> dict[str, int]:
    """{instance name: pid} of the stubs in ``stubs`` that are stopped (SIGSTOP, state T;
    not a debugger's tracing stop)."""
    import psutil

    stopped = {}
    for pid, name in stubs.items():
        try:
            if psutil.Process(pid).status() == psutil.STATUS_STOPPED:
                stopped[name] = pid
        except psutil.Error:
            continue
    return stopped


class _LogWatch:
    """New lines of tritonserver's log since the last look (None: it logs to stdout)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        try:
            self.offset = path.stat().st_size if path else 0
        except OSError:
            self.offset = 0

    def unhealthy(self) -> str | None:
        """The first 'Stub process ... is not healthy' line logged since the last call."""
        if self.path is None:
            return None
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(4 * 1024 * 1024)
        except OSError:
            return None
        self.offset += data.rfind(b"\n") + 1 if b"\n" in data else 0
        match = UNHEALTHY_STUB.search(data.decode("utf-8", "replace"))
        return match.group(0) if match else None


def supervise(handle: ServerHandle, interval: float = 0.5) -> str:
    """Block until the server exits or one of its backend stubs is lost; say which.

    A stub is lost when it is gone or a zombie (killed, crashed), stopped for
    `STOPPED_STUB_GRACE_S` (SIGSTOP: Triton declares it unhealthy and it exits when
    continued), or when Triton logs that a stub "is not healthy". Triton 2.51 recovers from
    none of these by itself (server#8604): every request routed to that instance fails
    until tritonserver is restarted, so the caller stops it at once (`stop_lost_server`).
    """
    stubs = backend_stubs(handle.pid)
    handle.stub_pids.update(stubs)
    log = _LogWatch(handle.log_path)
    stopped_since: dict[str, float] = {}
    while True:
        try:
            code = handle.wait(timeout=interval)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            how = f"code {code}"
            if code < 0:
                how += f": killed by {signal.Signals(-code).name}"
            return f"tritonserver exited unexpectedly ({how})"
        dead = dead_stubs(stubs)
        if dead:
            return (
                f"Python backend stub {', '.join(sorted(dead))} died; Triton does not restart "
                "it and its model cannot answer any more"
            )
        now = time.monotonic()
        stopped = stopped_stubs(stubs)
        stopped_since = {name: stopped_since.get(name, now) for name in stopped}
        grace_over = [n for n, t in stopped_since.items() if now - t >= STOPPED_STUB_GRACE_S]
        long_stopped = sorted(grace_over)
        if long_stopped:
            return (
                f"Python backend stub {', '.join(long_stopped)} stopped (SIGSTOP) for "
                f"{STOPPED_STUB_GRACE_S:g} s; Triton declares it unhealthy and cannot recover it"
            )
        line = log.unhealthy()
        if line:
            return f"tritonserver reports: {line}; Triton does not recover a stub"


def stop_lost_server(handle: ServerHandle, drain: float = DEAD_STUB_DRAIN_S) -> int:
    """Stop a server whose stub is lost, fast: `drain` seconds for what is in flight, then
    SIGKILL (and its stubs with it), instead of Triton waiting `exit_timeout` for a
    model it cannot unload. Its exit code."""
    return handle.stop(timeout=min(drain, handle.exit_timeout))
