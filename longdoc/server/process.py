"""Running and supervising tritonserver: start it, wait for readiness, watch it, stop it.

The server is locked down (`lockdown`): it binds to `ServeOptions.host` (loopback by
default), the admin APIs answer only requests that carry the key, and the readiness probe
sends the key where `health` is behind it.
"""

from __future__ import annotations

import ctypes
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
from longdoc.server.binary import find_tritonserver, help_text, launch_env
from longdoc.server.command import apply_allocator, build_command
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
    key_hidden: bool = False  # the key was wiped from /proc/<pid>/cmdline (`hide_argument`)
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


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGTERM tritonserver if the process that started it dies.

    Without this a crashed or SIGKILLed supervisor leaves a server holding the ports.
    Note: PR_SET_PDEATHSIG fires when the *thread* that forked exits, so start servers
    from the main thread or another thread that outlives them.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


_CLONE_NEWNS, _CLONE_NEWUSER = 0x00020000, 0x10000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REC, _MS_PRIVATE = 2, 4, 8, 0x4000, 1 << 18


def _enter_private_shm() -> None:  # pragma: no cover - runs in the child before exec
    """Give tritonserver (and the stubs it forks) a /dev/shm of their own, mode 0700.

    The Python backend creates its regions 0644 whatever the umask (it sets the mode
    itself), and they hold every request's tensors: on the host's /dev/shm any local user
    can read other people's documents. A new mount namespace with a fresh tmpfs on /dev/shm
    hides them: other users cannot reach it (only through /proc/<pid>/root, which needs
    ptrace rights over the server), and it disappears, regions and all, with the last
    process of the server. Unprivileged users get the mount namespace through a user
    namespace that maps only their own uid and gid (nothing else changes for the server).
    Best effort: where namespaces are not allowed (e.g. a container under the default
    seccomp profile, where /dev/shm is the pod's own anyway) the server runs on the
    host's /dev/shm, and `start_server` reports which it got.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        uid, gid = os.getuid(), os.getgid()
        if uid == 0:
            if libc.unshare(_CLONE_NEWNS) != 0:
                return
        else:
            if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS) != 0:
                return
            maps = {"setgroups": "deny", "uid_map": f"{uid} {uid} 1", "gid_map": f"{gid} {gid} 1"}
            for name, text in maps.items():  # setgroups first: gid_map needs it
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        if libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
            return
        libc.mount(
            b"tmpfs", b"/dev/shm", b"tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, b"mode=0700"
        )
    except OSError:
        return


def _child_setup(private_shm: bool):
    """The function the child runs before exec: parent-death signal, private /dev/shm."""

    def setup() -> None:  # pragma: no cover - runs in the child before exec
        _die_with_parent()
        if private_shm:
            _enter_private_shm()

    return setup


def has_private_shm(pid: int) -> bool:
    """Whether process `pid` sees another /dev/shm than this process (a private tmpfs)."""
    try:
        return os.stat(f"/proc/{pid}/root/dev/shm").st_dev != os.stat("/dev/shm").st_dev
    except OSError:
        return False


def hide_argument(pid: int, secret: str) -> bool:
    """Overwrite `secret` with `*` in the command line of process `pid` (ours, same user).

    Triton 2.51 takes the admin key only on its command line (`--http-restricted-api`,
    no file or environment variable), and /proc/<pid>/cmdline is readable by every local
    user. Once tritonserver has parsed its flags (into strings of its own) the argv area is
    never read again, so its parent, which may write the child's memory through
    /proc/<pid>/mem (same uid, ptrace rules), wipes the key there: ps and /proc show
    `admin-key=****`. True when the command line no longer holds the key.
    """
    needle = secret.encode()
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
        with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            args = mem.read(end - start)
            if needle in args:
                mem.seek(start)
                mem.write(args.replace(needle, b"*" * len(needle)))
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return needle not in f.read()
    except (OSError, ValueError, IndexError):
        return False


def _flags_parsed(pid: int) -> bool:
    """Whether tritonserver is past parsing its flags: it has started loading a backend."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "libtriton_" in f.read()
    except OSError:
        return False


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
        key.value,
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
                _child_setup(not options.host_shm) if sys.platform.startswith("linux") else None
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
    )

    def alive() -> bool:  # polled while models load: hide the key as soon as flags are read
        if not handle.key_hidden and _flags_parsed(process.pid):
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
