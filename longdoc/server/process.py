"""Running and supervising tritonserver: start it, wait for readiness, watch it, stop it.

The server is locked down (`lockdown`): it binds to `ServeOptions.host` (loopback by
default), the admin APIs answer only requests that carry the key, and the readiness probe
sends the key where `health` is behind it.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from longdoc.contract import ADMIN_HEADER, GRPC_ADMIN_HEADER
from longdoc.server.argv_secret import build_library, protect
from longdoc.server.binary import find_tritonserver, help_text, launch_env
from longdoc.server.command import apply_allocator, build_command
from longdoc.server.isolation import child_setup, flags_parsed, has_private_shm, hide_argument
from longdoc.server.lockdown import (
    ADMIN_APIS,
    AdminKey,
    child_env,
    generate_admin_key,
    given_key,
    probe_headers,
    restricted_apis,
)
from longdoc.server.options import ServeOptions
from longdoc.server.probe import connect_host, wait_ready

LOG_TAIL_LINES = 40
SHM_DIR = Path("/dev/shm")


class ServerStartError(RuntimeError):
    """tritonserver did not become ready; the message carries the log tail."""


def log_tail(path: str | os.PathLike[str], lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file (reads at most the last 256 KiB)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read()
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


# Error-level lines a CPU-only machine always logs; not worth showing as the cause.
_HARMLESS_ERRORS = ("CudaDriverHelper has not been initialized",)


def failure_report(path: str | os.PathLike[str], lines: int = LOG_TAIL_LINES) -> str:
    """Error-level log lines (the cause is often above the tail) plus the log's tail.

    Triton logs a model's load failure first and then ~40 lines of status tables, so
    the tail alone often misses the one line that matters.
    """
    tail = log_tail(path, lines)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            errors = [
                line.rstrip("\n")
                for line in f
                if re.match(r"E\d{4} ", line) and not any(h in line for h in _HARMLESS_ERRORS)
            ][-10:]
    except OSError:
        errors = []
    errors = [e for e in errors if e not in tail]
    report = f"log {path}"
    if errors:
        report += ", errors:\n" + "\n".join(errors) + "\n... last lines:"
    else:
        report += ", last lines:"
    return f"{report}\n{tail}"


@dataclass
class ServerHandle:
    """A running tritonserver started by `start_server`; stop it (or use `with`).

    `http_url`/`grpc_url`/`metrics_url` are "host:port" as tritonclient wants them.
    `log_path` is None when tritonserver logs to this process's stdout.
    """

    process: subprocess.Popen[bytes]
    http_url: str
    grpc_url: str
    metrics_url: str | None
    log_path: Path | None
    model_repository: Path
    key: AdminKey = field(repr=False)
    owns_key: bool = False  # the key was generated for this server: its file goes at stop
    exit_timeout: float = 20.0  # what tritonserver was told (--exit-timeout-secs)
    allocator: str = "glibc"  # malloc of tritonserver and its stubs (see apply_allocator)
    restricted: tuple[str, ...] = ADMIN_APIS  # the APIs that need the key
    shm_prefix: str | None = None  # name prefix of the Python backend's /dev/shm regions
    private_shm: bool = False  # tritonserver runs on its own /dev/shm (mount namespace)
    key_hidden: bool = False  # the key is not in /proc/<pid>/cmdline (now)
    # how: "never in the command line" (argv_secret's preloaded constructor), or "wiped
    # once the flags were parsed" (`hide_argument`: readable for the first moments)
    key_protection: str = ""
    stub_pids: set[int] = field(default_factory=set, repr=False)  # every stub seen

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def admin_key(self) -> str:
        return self.key.value

    @property
    def admin_key_file(self) -> Path | None:
        """The file a generated key was written to (None for a key from elsewhere)."""
        return self.key.generated_file

    @property
    def admin_headers(self) -> dict[str, str]:
        """HTTP headers that unlock the restricted APIs."""
        return {ADMIN_HEADER: self.admin_key}

    @property
    def grpc_admin_headers(self) -> dict[str, str]:
        """gRPC metadata that unlocks them (Triton prefixes the gRPC header name)."""
        return {GRPC_ADMIN_HEADER: self.admin_key}

    @property
    def probe_headers(self) -> dict[str, str]:
        """What a readiness probe must send (the key, if `health` is restricted)."""
        return probe_headers(self.restricted, self.admin_key)

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Block until tritonserver exits; its exit code (negative: killed by signal)."""
        return self.process.wait(timeout)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if self.log_path is None:
            return "(tritonserver logs to stdout)"
        return log_tail(self.log_path, lines)

    def failure_report(self) -> str:
        """Logged errors and the log tail, for a message about a server that died."""
        if self.log_path is None:
            return "tritonserver's log is in the output above"
        return failure_report(self.log_path)

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM, then SIGKILL after `timeout` s (default: Triton's own drain limit + 10);
        then nothing of this server is left: no stub (`kill_leftover_stubs`), no /dev/shm
        region (`remove_shm_regions`).

        On SIGTERM Triton stops accepting work, waits up to `exit_timeout` seconds for
        in-flight requests *and for idle keep-alive HTTP connections to close*, unloads
        the models and exits 0. Clients that keep connections open therefore delay a
        stop by up to `exit_timeout`; close them first for a fast stop.
        """
        if timeout is None:
            timeout = self.exit_timeout + 10
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.kill_leftover_stubs()
        self.remove_shm_regions()
        if self.owns_key:  # a per-server key is useless once the server is gone
            self.key.discard()
        return self.process.returncode

    def kill_leftover_stubs(self) -> list[int]:
        """SIGKILL every Python-backend stub of this server that outlived it; their pids.

        A stub whose tritonserver was killed is re-parented to PID 1 and keeps running (one
        was seen holding 202 MB and ignoring SIGTERM). The stubs are in tritonserver's
        process group (it is a session leader, `start_new_session`), so the group finds
        them; the pids seen while supervising are checked too, in case one left the group.
        Only processes named like a stub are touched, so a reused pid is never killed.
        """
        import psutil

        killed = []
        candidates = set(self.stub_pids)
        for proc in psutil.process_iter(["name"]):
            try:
                if (proc.info["name"] or "").startswith("triton_python") and os.getpgid(
                    proc.pid
                ) == self.pid:
                    candidates.add(proc.pid)
            except (psutil.Error, OSError):
                continue
        for pid in sorted(candidates):
            try:
                proc = psutil.Process(pid)
                if not proc.name().startswith("triton_python"):
                    continue
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                if proc.ppid() not in (self.pid, 1) and os.getpgid(pid) != self.pid:
                    continue  # another server's stub that happens to reuse the pid
                proc.kill()
                killed.append(pid)
            except (psutil.Error, OSError):
                continue
        if killed:
            psutil.wait_procs([psutil.Process(p) for p in killed if psutil.pid_exists(p)], 5)
        return killed

    def remove_shm_regions(self) -> list[str]:
        """Remove this server's Python-backend regions from the host's /dev/shm; their names.

        A stub or a server that is killed leaves its regions behind (hundreds of MB after a
        large request). On a private /dev/shm (`private_shm`) they went with the mount
        namespace; on the host's, the unique `shm_prefix` names ours.
        """
        if self.private_shm or not self.shm_prefix or not SHM_DIR.is_dir():
            return []
        removed = []
        for region in SHM_DIR.glob(self.shm_prefix + "*"):
            try:
                region.unlink()
                removed.append(region.name)
            except OSError:
                continue
        return removed

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(options: ServeOptions, *, restart_note: str | None = None) -> ServerHandle:
    """Run tritonserver as `options` say and return once `/v2/health/ready` is 200.

    `restart_note`: this start replaces a server that died; its log is kept, and this
    server's log is appended after a separator line saying why.

    All models in the repository are loaded at startup (`--model-control-mode none`), so
    "ready" means every model answered. On a crash during startup, or no readiness
    within `options.ready_timeout` seconds, the process is killed and `ServerStartError`
    carries the log's errors and tail. ValueError: options no server could start with.
    """
    options.check()
    repo = Path(options.model_repository).resolve()
    if not repo.is_dir():
        raise ServerStartError(f"model repository {repo} is not a directory")
    binary = Path(options.tritonserver) if options.tritonserver else find_tritonserver()
    restricted = restricted_apis(options.restrict)
    env, install_flags = launch_env(binary)
    env = child_env(env)
    allocator = apply_allocator(env, options.allocator)
    secret_library = build_library()
    log_file = options.log_file()

    if options.admin_key is None:
        key = generate_admin_key(log_file)
        owns_key = True
    else:
        key, owns_key = given_key(options.admin_key), False

    shm_prefix = f"longdoc_{os.getpid()}_{secrets.token_hex(4)}_"
    cmd = build_command(
        binary,
        options,
        protect(env, key.value, secret_library),
        install_flags=install_flags,
        help_text=help_text(str(binary), env.get("LD_LIBRARY_PATH", "")),
        shm_prefix=shm_prefix,
    )
    # A restart appends, after a separator: the log of the server that died is the evidence.
    log = open(log_file, "ab" if restart_note else "wb") if log_file else None
    if log and restart_note:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n===== longdoc serve, {stamp}: {restart_note} =====\n\n".encode())
        log.flush()
    try:
        process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log else None,
            env=env,
            # Own process group: Ctrl-C in a terminal reaches the supervisor, which then
            # stops the server in order, instead of both racing to shut down.
            start_new_session=True,
            preexec_fn=(
                child_setup(not options.host_shm) if sys.platform.startswith("linux") else None
            ),
        )
    except BaseException:
        if owns_key:
            key.discard()
        raise
    finally:
        if log:
            log.close()
    connect = connect_host(options.host)
    handle = ServerHandle(
        process=process,
        http_url=f"{connect}:{options.http_port}",
        grpc_url=f"{connect}:{options.grpc_port}",
        metrics_url=None if options.metrics_port is None else f"{connect}:{options.metrics_port}",
        log_path=log_file,
        model_repository=repo,
        key=key,
        owns_key=owns_key,
        exit_timeout=float(options.exit_timeout),
        allocator=allocator,
        restricted=restricted,
        shm_prefix=shm_prefix,
        private_shm=has_private_shm(process.pid),
        key_protection=(
            "never in the command line (preloaded argv_secret)"
            if secret_library
            else "wiped from the command line once parsed (no C compiler for argv_secret)"
        ),
    )

    def alive() -> bool:  # polled while models load: hide the key as soon as flags are read
        if not handle.key_hidden and flags_parsed(process.pid):
            handle.key_hidden = hide_argument(process.pid, key.value)
        return handle.is_alive()

    try:
        ready = wait_ready(
            handle.http_url,
            options.ready_timeout,
            alive=alive,
            headers=handle.probe_headers,
        )
        if ready and not handle.key_hidden:
            handle.key_hidden = hide_argument(process.pid, key.value)
    except BaseException:  # Ctrl-C / SIGTERM while waiting: leave nothing behind
        handle.stop(timeout=0)
        raise
    if ready:
        return handle
    code = handle.process.poll()
    if code is not None:
        reason = f"tritonserver exited during startup (code {code})"
    else:
        reason = f"tritonserver not ready within {options.ready_timeout:g} s"
    handle.stop(timeout=0)  # it serves nothing yet: no drain to wait for
    raise ServerStartError(f"{reason}; model repository {repo}; {handle.failure_report()}")
