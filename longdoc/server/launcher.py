"""Start, probe and stop a real `tritonserver` on a model repository.

Two places a server binary can come from:

* a `tritonserver` on PATH (the NGC image: `/opt/tritonserver/bin`), used as is;
* the one inside the `nvidia-pytriton` wheel (Triton 2.51, Python backend only), which
  needs a little assembly before it runs: the Python-backend stub that matches the
  running interpreter must sit next to `libtriton_python.so`, the wheel's bundled shared
  libraries and this interpreter's `libpython` must be on LD_LIBRARY_PATH, and this
  interpreter's `bin/` must come first on PATH. The stub embeds Python in isolated mode
  (it ignores PYTHONPATH) and finds its prefix by looking up `python` on PATH: that is
  how model.py files see this virtual environment (numpy 1.26, `longdoc` through the
  editable install) instead of the base interpreter's packages.

The server is locked down by default: it binds to loopback, and the admin APIs
(`ADMIN_APIS`) answer only requests that carry the `admin-key` header with the key.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

ADMIN_APIS = ("model-repository", "shared-memory", "logging", "trace")
# Triton's other API groups; any of them can also be put behind the key (`extra_restricted`):
# statistics and model-config tell a caller request counts, timings and the model's layout.
OPTIONAL_RESTRICTED_APIS = ("statistics", "model-config", "metadata", "health", "inference")
from longdoc.contract import ADMIN_HEADER, ADMIN_KEY_ENV, GRPC_ADMIN_HEADER  # noqa: E402,F401

CACHE_DIR_ENV = "LONGDOC_CACHE_DIR"
LOG_TAIL_LINES = 40

# Written last into a prepared pytriton install: its presence means the copy is complete.
_MARKER = ".longdoc-pytriton"
# Characters that would break tritonserver's `<apis>:<header>=<key>` flag parsing.
_KEY_FORBIDDEN = set(":,= \t\r\n\"'")


class ServerStartError(RuntimeError):
    """tritonserver did not become ready; the message carries the log tail."""


# --------------------------------------------------------------------------- finding


def find_tritonserver() -> Path:
    """The `tritonserver` to run: one on PATH wins, else the nvidia-pytriton one.

    A PATH binary is a full Triton install (NGC image) with its own backends; the wheel's
    binary is assembled once into a cache directory (see `_prepare_pytriton_server`).
    """
    on_path = shutil.which("tritonserver")
    if on_path:
        return Path(on_path)
    return _prepare_pytriton_server() / "bin" / "tritonserver"


def _pytriton_root() -> Path:
    """The wheel's `pytriton/tritonserver` folder (no pytriton import: it is slow)."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    candidates = [purelib / "pytriton" / "tritonserver"]
    spec = importlib.util.find_spec("pytriton")
    if spec and spec.submodule_search_locations:
        candidates += [Path(p) / "tritonserver" for p in spec.submodule_search_locations]
    for root in candidates:
        if (root / "bin" / "tritonserver").is_file():
            return root
    raise FileNotFoundError(
        "no tritonserver on PATH and none in the nvidia-pytriton wheel "
        f"(looked in {', '.join(str(c) for c in candidates)}); "
        "install nvidia-pytriton or put Triton's bin/ on PATH"
    )


def _pytriton_libs(root: Path) -> Path:
    """The wheel's bundled shared libraries (auditwheel puts them beside the package)."""
    for libs in (root.parent.parent / "nvidia_pytriton.libs", root / "external_libs"):
        if libs.is_dir():
            return libs
    raise FileNotFoundError(f"nvidia_pytriton.libs not found next to {root.parent}")


def _cache_base() -> Path:
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "longdoc"


def _prepare_pytriton_server() -> Path:
    """Assemble the wheel's server with this Python's backend stub, once, and reuse it.

    The result is symlinks into the wheel (nothing large is copied), so the folder name
    carries the pytriton version, the Python version and a hash of the wheel's location:
    two virtual environments never share, and a reinstall at another path gets a new one.
    """
    root = _pytriton_root()
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (root / "python_backend_stubs").iterdir())
        raise FileNotFoundError(f"nvidia-pytriton has no Python-backend stub for {py} ({have})")
    try:
        version = importlib.metadata.version("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    target = _cache_base() / f"tritonserver-{version}-py{py}-{tag}"
    if (target / _MARKER).is_file() and (target / "bin" / "tritonserver").exists():
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        (staging / "bin").mkdir()
        (staging / "bin" / "tritonserver").symlink_to(root / "bin" / "tritonserver")
        if (root / "caches").is_dir():
            (staging / "caches").symlink_to(root / "caches")
        for backend in (root / "backends").iterdir():
            if not backend.is_dir():
                continue
            dst = staging / "backends" / backend.name
            dst.mkdir(parents=True)
            for item in backend.iterdir():
                if item.is_file():
                    (dst / item.name).symlink_to(item)
        (staging / "backends" / "python" / stub.name).symlink_to(stub)
        (staging / _MARKER).write_text(f"{root}\npython {py}\n")
        staging.chmod(0o755)  # mkdtemp made it 0700; nothing in here is secret
        if target.exists():  # stale or broken copy (wheel moved): replace it
            shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:  # another process won the race; its copy is as good as ours
            if not (target / _MARKER).is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _launch_env(binary: Path) -> tuple[dict[str, str], list[str]]:
    """Environment and extra flags a given binary needs to run its Python backend here."""
    env = dict(os.environ)
    install = binary.parent.parent
    if not (install / _MARKER).is_file():
        return env, []  # a full Triton install knows where its backends are
    root = Path((install / _MARKER).read_text().splitlines()[0])
    lib_dirs = [str(_pytriton_libs(root))]
    libdir = sysconfig.get_config_var("LIBDIR")  # this interpreter's libpython3.X.so
    if libdir:
        lib_dirs.append(libdir)
    if env.get("LD_LIBRARY_PATH"):
        lib_dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_dirs)
    # Not resolved: in a venv, bin/python is a symlink and the venv is found from bin/.
    bindir = os.path.dirname(os.path.abspath(sys.executable))
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", os.defpath)])
    flags = [f"--backend-directory={install / 'backends'}"]
    if (install / "caches").exists():
        flags.append(f"--cache-directory={install / 'caches'}")
    return env, flags


# --------------------------------------------------------------------------- allocator

# glibc's malloc keeps what a huge request made it allocate (a chunker stub kept ~45 MB
# after a 50 MB document, and ~330 MB of tokenizer heap after a million tokens before it
# learnt to malloc_trim; RELIABILITY.md, "Memory around hostile input"). jemalloc with a
# background thread gives freed pages back to the kernel within about a second. Triton's
# release notes recommend it (their containers ship it: LD_PRELOAD). The stubs inherit it.
JEMALLOC_ENV = "LONGDOC_JEMALLOC"  # path to libjemalloc.so, if not in a standard place
JEMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so",
)
JEMALLOC_CONF = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0"
GRPC_REQUEST_POOL = 0  # --grpc-infer-allocation-pool-size (Triton's default: 8); see build_command
ALLOCATORS = ("auto", "jemalloc", "glibc")


def find_jemalloc() -> str | None:
    """libjemalloc's path ($LONGDOC_JEMALLOC, then the usual Debian/RHEL places), or None."""
    for candidate in (os.environ.get(JEMALLOC_ENV), *JEMALLOC_PATHS):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def apply_allocator(env: dict[str, str], allocator: str) -> str:
    """Set `env` up for `allocator` ("auto": jemalloc when installed, else glibc) and return
    the one in use. Raises ServerStartError for "jemalloc" when it is not installed."""
    if allocator not in ALLOCATORS:
        raise ValueError(f"allocator must be one of {ALLOCATORS} (got {allocator!r})")
    library = find_jemalloc() if allocator != "glibc" else None
    if library is None:
        if allocator == "jemalloc":
            raise ServerStartError(
                "jemalloc requested but not found: install it (Debian/Ubuntu: apt-get install "
                f"libjemalloc2) or point ${JEMALLOC_ENV} at libjemalloc.so"
            )
        return "glibc"
    preload = env.get("LD_PRELOAD", "")
    if library not in preload.split(":"):
        env["LD_PRELOAD"] = f"{library}:{preload}" if preload else library
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    return "jemalloc"


@lru_cache(maxsize=8)
def _help_text(binary: str, ld_library_path: str) -> str:
    """`tritonserver --help`, to ask the build which flags it knows."""
    env = dict(os.environ, LD_LIBRARY_PATH=ld_library_path)
    try:
        out = subprocess.run(
            [binary, "--help"], env=env, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout + out.stderr


# --------------------------------------------------------------------------- admin key


def resolve_admin_key(key_file: str | os.PathLike[str] | None = None) -> str | None:
    """The admin key from `key_file` if given, else from $LONGDOC_ADMIN_KEY, else None.

    There is deliberately no default key in code: None means "generate one per run".
    """
    if key_file is not None:
        key = Path(key_file).read_text().strip()
        source = str(key_file)
    else:
        key = os.environ.get(ADMIN_KEY_ENV, "").strip()
        source = f"${ADMIN_KEY_ENV}"
        if not key:
            return None
    check_admin_key(key, source)
    return key


def check_admin_key(key: str, source: str = "admin key") -> None:
    """Reject keys tritonserver would mis-parse or that are too short to mean anything."""
    if len(key) < 16:
        raise ValueError(f"{source}: admin key must be at least 16 characters")
    bad = sorted(_KEY_FORBIDDEN & set(key))
    if bad:
        raise ValueError(f"{source}: admin key may not contain {bad!r}")


def _write_secret(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read (mode 0600, even if it existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- probing


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


# Probes must not go through an HTTP(S)_PROXY from the environment.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def is_ready(http_url: str, timeout: float = 2.0) -> bool:
    """True if `GET /v2/health/ready` answers 200 (all models loaded, server live)."""
    url = http_url if "://" in http_url else f"http://{http_url}"
    try:
        with _NO_PROXY_OPENER.open(f"{url}/v2/health/ready", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(
    http_url: str,
    timeout: float = 120.0,
    *,
    interval: float = 0.2,
    alive: Callable[[], bool] | None = None,
) -> bool:
    """Poll readiness until it answers 200 (True) or `timeout` passes (False).

    `alive` lets the caller stop waiting as soon as the server process is gone.
    """
    deadline = time.monotonic() + timeout
    while True:
        if is_ready(http_url, timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
            return True
        if alive is not None and not alive():
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


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


def _connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "[::1]"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


# --------------------------------------------------------------------------- the server


@dataclass
class ServerHandle:
    """A running tritonserver started by `start_server`; stop it (or use `with`).

    `http_url`/`grpc_url`/`metrics_url` are "host:port" as tritonclient wants them.
    """

    process: subprocess.Popen[bytes]
    http_url: str
    grpc_url: str
    metrics_url: str | None
    log_path: Path
    model_repository: Path
    admin_key: str = field(repr=False)
    admin_key_file: Path | None = None  # set when the key was generated for this run
    exit_timeout: float = 20.0  # what tritonserver was told (--exit-timeout-secs)
    allocator: str = "glibc"  # malloc of tritonserver and its stubs (see apply_allocator)
    restricted: tuple[str, ...] = ADMIN_APIS  # the APIs that need the key

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def admin_headers(self) -> dict[str, str]:
        """HTTP headers that unlock the restricted admin APIs."""
        return {ADMIN_HEADER: self.admin_key}

    @property
    def grpc_admin_headers(self) -> dict[str, str]:
        """gRPC metadata that unlocks them (Triton prefixes the gRPC header name)."""
        return {GRPC_ADMIN_HEADER: self.admin_key}

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Block until tritonserver exits; its exit code (negative: killed by signal)."""
        return self.process.wait(timeout)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)

    def failure_report(self) -> str:
        """Logged errors and the log tail, for a message about a server that died."""
        return failure_report(self.log_path)

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM, then SIGKILL after `timeout` s (default: Triton's own drain limit + 10).

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
        if self.admin_key_file is not None:  # a per-run key is useless once the run is over
            self.admin_key_file.unlink(missing_ok=True)
        return self.process.returncode

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


def build_command(
    binary: Path,
    model_repository: Path,
    *,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int | None,
    admin_key: str,
    response_cache_bytes: int | None,
    extra_args: Iterable[str],
    help_text: str = "",
    extra_restricted: Sequence[str] = (),
) -> list[str]:
    """The tritonserver argv (separate from `start_server` so it can be inspected)."""
    restriction = f"{','.join(restricted_apis(extra_restricted))}:{ADMIN_HEADER}={admin_key}"
    cmd = [
        str(binary),
        f"--model-repository={model_repository}",
        "--model-control-mode=none",
        f"--http-address={host}",
        f"--http-port={http_port}",
        f"--grpc-address={host}",
        f"--grpc-port={grpc_port}",
        # Triton's help says `<apis>,<key>=<value>`; the parser wants `<apis>:<key>=<value>`.
        f"--http-restricted-api={restriction}",
        f"--grpc-restricted-protocol={restriction}",
    ]
    if metrics_port is None:
        cmd.append("--allow-metrics=false")
    else:
        cmd.append(f"--metrics-port={metrics_port}")
        if "--metrics-address" in help_text:
            cmd.append(f"--metrics-address={host}")
    if response_cache_bytes:
        cmd.append(f"--cache-config=local,size={int(response_cache_bytes)}")
    if "--grpc-infer-allocation-pool-size" in help_text and not any(
        a.startswith("--grpc-infer-allocation-pool-size") for a in extra_args
    ):
        # Triton keeps gRPC request objects for reuse, each with the capacity of the
        # largest message it held: 50 MB documents left ~50 MB per pooled object (up to
        # 8) for good. Per-request objects cost microseconds next to a document.
        cmd.append(f"--grpc-infer-allocation-pool-size={GRPC_REQUEST_POOL}")
    cmd.extend(extra_args)
    return cmd


def restricted_apis(extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The admin APIs plus `extra` (validated): what needs the key."""
    unknown = sorted(set(extra) - set(OPTIONAL_RESTRICTED_APIS) - set(ADMIN_APIS))
    if unknown:
        raise ValueError(
            f"unknown API {', '.join(unknown)}; choose from {', '.join(OPTIONAL_RESTRICTED_APIS)}"
        )
    return ADMIN_APIS + tuple(a for a in OPTIONAL_RESTRICTED_APIS if a in extra)


def start_server(
    model_repository: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int | None = 8002,
    log_path: str | os.PathLike[str] | None = None,
    admin_key: str | None = None,
    response_cache_bytes: int | None = None,
    extra_args: Sequence[str] = (),
    ready_timeout: float = 120.0,
    exit_timeout: int = 20,
    tritonserver: str | os.PathLike[str] | None = None,
    allocator: str = "auto",
    extra_restricted: Sequence[str] = (),
) -> ServerHandle:
    """Run tritonserver on `model_repository` and return once `/v2/health/ready` is 200.

    All models in the repository are loaded at startup (`--model-control-mode none`), so
    "ready" means every model answered. On a crash during startup, or no readiness
    within `ready_timeout` seconds, the process is killed and `ServerStartError` carries
    the last lines of the log. `admin_key=None` generates a key for this run and writes
    it to a 0600 file next to the log (`handle.admin_key_file`). `metrics_port=None`
    turns metrics off. `response_cache_bytes` sizes the local response cache used by
    models whose config enables `response_cache`. `exit_timeout` bounds how long a stop
    waits for in-flight requests and open connections (`--exit-timeout-secs`).
    `allocator`: "auto" runs tritonserver and its stubs on jemalloc when it is installed
    (memory freed after huge requests goes back to the kernel), else on glibc's malloc.
    `extra_restricted`: more API groups behind the key (e.g. "statistics", "model-config").
    """
    repo = Path(model_repository).resolve()
    if not repo.is_dir():
        raise ServerStartError(f"model repository {repo} is not a directory")
    binary = Path(tritonserver) if tritonserver else find_tritonserver()
    restricted = restricted_apis(extra_restricted)
    env, install_flags = _launch_env(binary)
    allocator = apply_allocator(env, allocator)

    if log_path is None:
        log_file = Path(tempfile.mkdtemp(prefix="longdoc-serve-")) / "tritonserver.log"
    else:
        log_file = Path(log_path).resolve()
        log_file.parent.mkdir(parents=True, exist_ok=True)

    key_file: Path | None = None
    if admin_key is None:
        admin_key = secrets.token_urlsafe(32)
        key_file = log_file.with_name(log_file.stem + ".admin-key")
        _write_secret(key_file, admin_key)
    else:
        check_admin_key(admin_key)

    cmd = build_command(
        binary,
        repo,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        admin_key=admin_key,
        response_cache_bytes=response_cache_bytes,
        extra_args=[*install_flags, f"--exit-timeout-secs={int(exit_timeout)}", *extra_args],
        help_text=_help_text(str(binary), env.get("LD_LIBRARY_PATH", "")),
        extra_restricted=extra_restricted,
    )
    with open(log_file, "wb") as log:
        process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            # Own process group: Ctrl-C in a terminal reaches the supervisor, which then
            # stops the server in order, instead of both racing to shut down.
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    connect = _connect_host(host)
    handle = ServerHandle(
        process=process,
        http_url=f"{connect}:{http_port}",
        grpc_url=f"{connect}:{grpc_port}",
        metrics_url=None if metrics_port is None else f"{connect}:{metrics_port}",
        log_path=log_file,
        model_repository=repo,
        admin_key=admin_key,
        admin_key_file=key_file,
        exit_timeout=float(exit_timeout),
        allocator=allocator,
        restricted=restricted,
    )
    try:
        ready = wait_ready(handle.http_url, ready_timeout, alive=handle.is_alive)
    except BaseException:  # Ctrl-C / SIGTERM while waiting: leave nothing behind
        handle.stop(timeout=0)
        raise
    if ready:
        return handle
    code = handle.process.poll()
    if code is not None:
        reason = f"tritonserver exited during startup (code {code})"
    else:
        reason = f"tritonserver not ready within {ready_timeout:g} s"
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


def supervise(handle: ServerHandle, interval: float = 0.5) -> str:
    """Block until the server exits or one of its backend stubs dies; say which."""
    stubs = backend_stubs(handle.pid)
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
