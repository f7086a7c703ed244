"""The server launcher and `longdoc serve`, against a real tritonserver and real clients.

The model is `tests/fixtures/echo_repo/echo` (Python backend: TEXT -> its UTF-8 byte
length), which also imports `longdoc`, so a passing test proves the launcher's
environment lets model.py files see this project and this venv's numpy.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from loadgen import listening_addresses
from tritonclient.utils import InferenceServerException

from longdoc.cli_options import Parser, env_name
from longdoc.contract import ADMIN_HEADER, ADMIN_KEY_ENV, GRPC_ADMIN_HEADER
from longdoc.server import cli as serve_cli
from longdoc.server.binary import find_tritonserver
from longdoc.server.command import find_jemalloc
from longdoc.server.lockdown import (
    ADMIN_KEY_FILE_ENV,
    check_admin_key,
    check_triton_args,
    resolve_admin_key,
)
from longdoc.server.options import ServeOptions
from longdoc.server.probe import free_ports, is_ready
from longdoc.server.process import ServerHandle, ServerStartError, start_server
from longdoc.server.stubs import backend_stubs

pytestmark = pytest.mark.timeout(120)
# Tests that start a tritonserver are marked `integration` (make test-fast leaves them out).

ROOT = Path(__file__).resolve().parents[1]
ECHO_REPO = ROOT / "tests" / "fixtures" / "echo_repo"
TEXT = "héllo, long document"  # 21 bytes in UTF-8


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """One server for the read-only checks (startup costs seconds)."""
    http, grpc, metrics = free_ports(3)
    log = tmp_path_factory.mktemp("serve") / "triton.log"
    options = ServeOptions(
        ECHO_REPO,
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
        log_path=log,
        response_cache_mb=1,
        ready_timeout=90,
    )
    with start_server(options) as handle:
        yield handle


def _text_input(module, text: str = TEXT):
    inp = module.InferInput("TEXT", [1], "BYTES")
    inp.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
    return inp


def _echo_config(name: str) -> str:
    """The echo model's config under another model name (Triton wants name == dir)."""
    config = (ECHO_REPO / "echo" / "config.pbtxt").read_text()
    return config.replace('name: "echo"', f'name: "{name}"')


def test_find_tritonserver_prepares_stub_for_this_python() -> None:
    binary = find_tritonserver()
    assert os.access(binary, os.X_OK)
    if shutil.which("tritonserver"):
        pytest.skip("tritonserver on PATH is used as is")
    stub = binary.parent.parent / "backends" / "python" / "triton_python_backend_stub"
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert stub.resolve().parent.name == py
    assert find_tritonserver() == binary  # prepared once, then reused


@pytest.mark.integration
def test_ready_and_bound_to_loopback(server: ServerHandle) -> None:
    assert server.is_alive()
    assert server.http_url.startswith("127.0.0.1:")
    assert is_ready(server.http_url)
    with httpclient.InferenceServerClient(server.http_url) as client:
        assert client.is_model_ready("echo")
    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=5) as resp:
        assert b"nv_inference_request_success" in resp.read()
    for url in (server.http_url, server.grpc_url, server.metrics_url):
        port = int(url.rsplit(":", 1)[1])
        addresses = listening_addresses(port)
        assert addresses, f"nothing listens on {port}"
        assert all(not ip.is_unspecified for ip in addresses), f"{port} bound to a wildcard"
    log = server.log_path.read_text()
    assert "Creating TritonCache with name: 'local'" in log  # response cache configured
    # no pooled gRPC request objects (they keep the capacity of the largest message),
    # and jemalloc under tritonserver and its stubs when installed (RELIABILITY.md)
    cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
    assert b"--grpc-infer-allocation-pool-size=0" in cmdline
    environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
    preload = [e for e in environ if e.startswith(b"LD_PRELOAD=")]
    if find_jemalloc():
        assert server.allocator == "jemalloc" and b"jemalloc" in preload[0]
    else:
        assert server.allocator == "glibc" and not any(b"jemalloc" in e for e in preload)


@pytest.mark.integration
def test_infer_over_http_and_grpc(server: ServerHandle) -> None:
    with httpclient.InferenceServerClient(server.http_url) as client:
        result = client.infer("echo", [_text_input(httpclient)])
        assert result.as_numpy("LENGTH").tolist() == [len(TEXT.encode())]
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        result = client.infer("echo", [_text_input(grpcclient, "abc")])
        assert result.as_numpy("LENGTH").tolist() == [3]


@pytest.mark.integration
def test_admin_api_needs_key_over_http(server: ServerHandle) -> None:
    with httpclient.InferenceServerClient(server.http_url) as client:
        _check_http_admin(client, server)


def _check_http_admin(client: httpclient.InferenceServerClient, server: ServerHandle) -> None:
    with pytest.raises(InferenceServerException, match=ADMIN_HEADER):
        client.get_model_repository_index()  # POST /v2/repository/index
    with pytest.raises(InferenceServerException, match=ADMIN_HEADER):
        client.get_model_repository_index(headers={ADMIN_HEADER: "wrong-" + server.admin_key})
    index = client.get_model_repository_index(headers=server.admin_headers)
    assert [m["name"] for m in index] == ["echo"]
    # Ordinary APIs stay open.
    assert client.get_model_metadata("echo")["name"] == "echo"


@pytest.mark.integration
def test_more_apis_behind_the_key_on_request(tmp_path: Path) -> None:
    """`restrict` (longdoc serve --restrict-api): statistics, model-config and health need
    the key too; inference stays open; an unknown API name is refused before starting.

    Regression: with health behind the key, the readiness probe sent no key and the start
    waited for a 403 to turn into a 200 until it timed out."""
    http, grpc, metrics = free_ports(3)
    with pytest.raises(ValueError, match="unknown API"):
        start_server(ServeOptions(ECHO_REPO, http_port=http, grpc_port=grpc, restrict=["stats"]))
    options = ServeOptions(
        ECHO_REPO,
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
        log_path=tmp_path / "triton.log",
        restrict=["statistics,model-config", "health"],  # as --restrict-api takes them
        ready_timeout=60,
    )
    with start_server(options) as handle:
        assert {"statistics", "model-config", "health"} <= set(handle.restricted)
        assert not is_ready(handle.http_url)  # the probe without the key: 403
        assert is_ready(handle.http_url, headers=handle.probe_headers)
        with httpclient.InferenceServerClient(handle.http_url) as client:
            for call in (client.get_inference_statistics, client.get_model_config):
                args = () if call is client.get_inference_statistics else ("echo",)
                with pytest.raises(InferenceServerException, match=ADMIN_HEADER):
                    call(*args)
                assert call(*args, headers=handle.admin_headers)
            assert client.infer("echo", [_text_input(httpclient)]).as_numpy("LENGTH")[0] > 0
        with grpcclient.InferenceServerClient(handle.grpc_url) as client:
            with pytest.raises(InferenceServerException):
                client.get_inference_statistics()
            key = {GRPC_ADMIN_HEADER: handle.admin_key}
            assert client.get_inference_statistics(headers=key, as_json=True)
            assert client.is_server_ready(headers=key)


@pytest.mark.integration
def test_admin_api_needs_key_over_grpc(server: ServerHandle) -> None:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        _check_grpc_admin(client, server)


def _check_grpc_admin(client: grpcclient.InferenceServerClient, server: ServerHandle) -> None:
    with pytest.raises(InferenceServerException, match=GRPC_ADMIN_HEADER):
        client.get_model_repository_index()
    with pytest.raises(InferenceServerException, match=GRPC_ADMIN_HEADER):
        client.get_model_repository_index(headers=server.admin_headers)  # HTTP name: no
    index = client.get_model_repository_index(headers=server.grpc_admin_headers, as_json=True)
    assert [m["name"] for m in index["models"]] == ["echo"]


@pytest.mark.integration
def test_generated_admin_key_file_is_private(server: ServerHandle) -> None:
    assert server.admin_key_file is not None
    assert server.admin_key_file.parent == server.log_path.parent
    assert stat.S_IMODE(server.admin_key_file.stat().st_mode) == 0o600
    assert server.admin_key_file.read_text().strip() == server.admin_key


# Base64 padding and every character Triton's `<apis>:<header>=<key>` parser might trip on:
# it splits at the first ':' and the first '=' after it, so the key keeps all of these.
ODD_KEY = "b64+/key=:with,sep'\"!#$%&()*;<>?@[]^`{|}~=="


@pytest.mark.integration
def test_stop_terminates_process(tmp_path: Path) -> None:
    """A given key is never written anywhere; a key with '=', ':' and ',' (regression: the
    launcher refused '=') unlocks the admin APIs over HTTP and gRPC on the real server."""
    http, grpc, metrics = free_ports(3)
    options = ServeOptions(
        ECHO_REPO,
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
        log_path=tmp_path / "t.log",
        admin_key=ODD_KEY,
    )
    with start_server(options) as handle:
        assert handle.admin_key_file is None  # a given key is never written anywhere
        assert list(tmp_path.iterdir()) == [tmp_path / "t.log"]
        assert ODD_KEY not in repr(options) + repr(handle)  # nor shown in a traceback
        pid = handle.pid
        assert handle.is_alive()
        with httpclient.InferenceServerClient(handle.http_url) as client:
            _check_http_admin(client, handle)
        with grpcclient.InferenceServerClient(handle.grpc_url) as client:
            _check_grpc_admin(client, handle)
    assert not handle.is_alive()
    assert handle.returncode == 0  # SIGTERM is a clean shutdown for Triton
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not is_ready(handle.http_url, timeout=0.5)
    assert ODD_KEY not in (tmp_path / "t.log").read_text()


@pytest.mark.integration
def test_bad_repository_raises_with_log_tail(tmp_path: Path) -> None:
    model = tmp_path / "repo" / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(_echo_config(model.name))
    (model / "1" / "model.py").write_text(
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        raise RuntimeError('broken-model-marker')\n"
    )
    http, grpc, metrics = free_ports(3)
    options = ServeOptions(
        tmp_path / "repo",
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
        log_path=tmp_path / "t.log",
    )
    with pytest.raises(ServerStartError, match="exited during startup") as err:
        start_server(options)
    assert "broken-model-marker" in str(err.value)  # the log tail is in the message
    assert not (tmp_path / "t.admin-key").exists()
    with pytest.raises(ServerStartError, match="not a directory"):
        start_server(ServeOptions(tmp_path / "missing"))


@pytest.mark.integration
def test_ready_timeout_kills_server(tmp_path: Path) -> None:
    model = tmp_path / "repo" / "slow"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(_echo_config(model.name))
    (model / "1" / "model.py").write_text(
        "import time\n"
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        time.sleep(60)\n"
    )
    http, grpc, metrics = free_ports(3)
    started = time.monotonic()
    options = ServeOptions(
        tmp_path / "repo",
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
        log_path=tmp_path / "t.log",
        ready_timeout=2,
    )
    with pytest.raises(ServerStartError, match="not ready within 2 s"):
        start_server(options)
    assert time.monotonic() - started < 15
    assert not is_ready(f"127.0.0.1:{http}", timeout=0.5)


def test_resolve_admin_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ADMIN_KEY_ENV, raising=False)
    assert resolve_admin_key() is None
    monkeypatch.setenv(ADMIN_KEY_ENV, "from-env-0123456789")
    key = resolve_admin_key()
    assert key.value == "from-env-0123456789" and key.source == f"key from ${ADMIN_KEY_ENV}"
    key_file = tmp_path / "key"
    key_file.write_text("from-file-0123456789\n")  # a mounted secret keeps its newline
    with pytest.raises(ValueError, match="not both"):
        resolve_admin_key(key_file)
    monkeypatch.delenv(ADMIN_KEY_ENV)
    key = resolve_admin_key(key_file)
    assert key.value == "from-file-0123456789" and str(key_file) in key.source
    assert key.generated_file is None
    key_file.write_text("short")
    with pytest.raises(ValueError, match="at least 16"):
        resolve_admin_key(key_file)
    with pytest.raises(ValueError, match="not a readable file"):
        resolve_admin_key(tmp_path / "missing")


def test_the_one_key_rule() -> None:
    """Visible ASCII, at least 16: what HTTP headers and gRPC metadata carry intact."""
    check_admin_key(ODD_KEY)
    check_admin_key("0123456789abcdef0123456789abcdef")
    check_admin_key("c2VjcmV0LWtleS1vZi0xNg==")  # base64 padding
    for bad, why in (
        ("k" * 15, "at least 16"),
        ("inner space 0123456789", "visible ASCII"),
        ("tab\tkey-0123456789", "visible ASCII"),
        ("newline\nkey-0123456789", "visible ASCII"),
        ("clé-non-ascii-0123456789", "visible ASCII"),
    ):
        with pytest.raises(ValueError, match=why):
            check_admin_key(bad)


def test_lock_down_flags_cannot_be_passed_through() -> None:
    check_triton_args(["--log-verbose=1", "--log-format=ISO8601", "--http-thread-count=4"])
    for bad in (
        "--model-control-mode=explicit",
        "--model-control-mode",
        "--load-model=x",
        "--http-restricted-api=trace:k=v",
        "--grpc-restricted-protocol=trace:k=v",
        "--model-repository=/tmp",
        "--model-store=/tmp",
        "--repository-poll-secs=5",
        # Triton's getopt_long takes unambiguous prefixes (test_hostile_neighbours.py)
        "--model-control=explicit",
        "--load-mod=*",
    ):
        with pytest.raises(ValueError, match="cannot be overridden"):
            check_triton_args([bad])


# --------------------------------------------------------------------------- flags and env


def _serve_args(argv: list[str]):
    parser = Parser(prog="longdoc")
    serve_cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_every_serve_flag_reads_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LONGDOC_"):
            monkeypatch.delenv(name)
    defaults = vars(_serve_args([]))
    env = {
        "LONGDOC_REPOSITORY": "/models",
        "LONGDOC_HOST": "0.0.0.0",
        "LONGDOC_HTTP_PORT": "8080",
        "LONGDOC_GRPC_PORT": "9001",
        "LONGDOC_METRICS_PORT": "0",
        "LONGDOC_ADMIN_KEY_FILE": "/run/secrets/key",
        "LONGDOC_REQUIRE_ADMIN_KEY": "true",
        "LONGDOC_RESTRICT_API": "statistics,model-config health",
        "LONGDOC_RESPONSE_CACHE_MB": "08",
        "LONGDOC_LOG": "-",
        "LONGDOC_READY_TIMEOUT": "600",
        "LONGDOC_EXIT_TIMEOUT": "30",
        "LONGDOC_RESTART": "2",
        "LONGDOC_ALLOCATOR": "glibc",
        "LONGDOC_HOST_SHM": "true",
        "LONGDOC_TRITON_ARG": "--log-verbose=1 '--log-format=ISO8601'",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = _serve_args([])
    flags = {k for k in vars(args) if k not in ("command", "func")}
    assert {env_name(f) for f in flags} == set(env), "a flag without its variable"
    assert (args.repository, args.host, args.http_port) == ("/models", "0.0.0.0", 8080)
    assert (args.grpc_port, args.metrics_port, args.response_cache_mb) == (9001, 0, 8)
    assert args.admin_key_file == "/run/secrets/key" and args.require_admin_key is True
    assert args.restrict_api == ["statistics,model-config", "health"]
    assert (args.log, args.ready_timeout, args.exit_timeout) == ("-", 600.0, 30)
    assert (args.restart, args.allocator, args.host_shm) == (2, "glibc", True)
    assert args.triton_arg == ["--log-verbose=1", "--log-format=ISO8601"]
    assert all(vars(args)[k] != defaults[k] for k in flags)
    # The command line wins, repeatable flags included (they replace the variable's list).
    args = _serve_args(["--http-port=1234", "--triton-arg=--log-info=true"])
    assert args.http_port == 1234 and args.triton_arg == ["--log-info=true"]
    # An empty variable is unset.
    monkeypatch.setenv("LONGDOC_HTTP_PORT", "")
    assert _serve_args([]).http_port == 8000
    # The old name of --repository, and its variable (images and manifests set it), work.
    monkeypatch.delenv("LONGDOC_REPOSITORY")
    monkeypatch.setenv("LONGDOC_MODEL_REPOSITORY", "/old")
    assert _serve_args([]).repository == "/old"
    assert _serve_args(["--model-repository", "/cli"]).repository == "/cli"


def test_help_explains_the_variables() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "longdoc.cli", "serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "--repository" in out.stdout and ADMIN_HEADER in out.stdout
    assert "--model-repository" not in out.stdout  # deprecated: hidden, still accepted
    text = " ".join(out.stdout.split())
    assert "reads LONGDOC_<FLAG>" in text and "LONGDOC_TRITON_ARG" in text


def _serve(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LONGDOC_")}
    return subprocess.run(
        [sys.executable, "-m", "longdoc.cli", "serve", f"--repository={ECHO_REPO}", *argv],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.serve_refuses
def test_serve_refuses_bad_settings_before_starting(tmp_path: Path) -> None:
    """Exit 2 with the reason, and nothing started or written."""
    key_file = tmp_path / "key"
    key_file.write_text("0123456789abcdef0123456789abcdef\n")
    for argv, env, message in (
        ([], {"LONGDOC_HTTP_PORT": "80x"}, "$LONGDOC_HTTP_PORT='80x': invalid int"),
        ([], {"LONGDOC_ALLOCATOR": "tcmalloc"}, "$LONGDOC_ALLOCATOR='tcmalloc': choose from"),
        ([], {"LONGDOC_RESTRICT_API": "stats"}, "unknown API stats"),
        (["--triton-arg=--model-control-mode=explicit"], {}, "cannot be overridden"),
        (["--require-admin-key"], {}, "no admin key"),
        ([], {"LONGDOC_REQUIRE_ADMIN_KEY": "yes please"}, "$LONGDOC_REQUIRE_ADMIN_KEY"),
        ([], {ADMIN_KEY_ENV: "short"}, "too short"),
        ([], {ADMIN_KEY_ENV: "0123456789abcdef", ADMIN_KEY_FILE_ENV: str(key_file)}, "not both"),
        ([], {ADMIN_KEY_FILE_ENV: str(tmp_path / "nope")}, "not a readable file"),
        ([f"--log={tmp_path / 'logs' / 's.log'}", "--http-port=0"], {}, "not a TCP port"),
    ):
        out = _serve(argv, env)
        assert out.returncode == 2, (argv, env, out.stdout, out.stderr)
        assert "longdoc serve: error: " in out.stderr and message in out.stderr, out.stderr
        assert "tritonserver ready" not in out.stdout
    assert not (tmp_path / "logs").exists()


# --------------------------------------------------------------------------- the CLI


class _Cli:
    """`python -m longdoc.server.cli serve` in a subprocess, its output collected line by line."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.http, grpc, metrics = free_ports(3)
        cmd = [
            sys.executable,
            "-m",
            "longdoc.server.cli",
            "serve",
            f"--repository={ECHO_REPO}",
            f"--http-port={self.http}",
            f"--grpc-port={grpc}",
            f"--metrics-port={metrics}",
            f"--log={tmp_path / 'serve.log'}",
            *extra,
        ]
        env = {k: v for k, v in os.environ.items() if k != ADMIN_KEY_ENV}
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def expect(self, pattern: str, timeout: float = 90) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"no {pattern!r} in output:\n{''.join(self.seen)}")

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        time.sleep(0.1)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code, "".join(self.seen)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.integration
def test_cli_serve_ready_then_sigterm_exits_zero(tmp_path: Path) -> None:
    cli = _Cli(tmp_path)
    try:
        cli.expect(r"tritonserver ready \(pid (\d+)\)")
        cli.expect(rf"HTTP\s+http://127\.0\.0\.1:{cli.http}")
        cli.expect(r"Ctrl-C or SIGTERM stops")
        assert is_ready(f"127.0.0.1:{cli.http}")
        cli.proc.send_signal(signal.SIGTERM)
        code, out = cli.finish()
    finally:
        cli.kill()
    assert code == 0, out
    assert "tritonserver stopped" in out
    assert not is_ready(f"127.0.0.1:{cli.http}", timeout=0.5)


@pytest.mark.integration
def test_cli_notices_crashed_server(tmp_path: Path) -> None:
    cli = _Cli(tmp_path)
    try:
        pid = int(cli.expect(r"tritonserver ready \(pid (\d+)\)").group(1))
        cli.expect(r"Ctrl-C or SIGTERM stops")
        os.kill(pid, signal.SIGKILL)
        code, out = cli.finish()
    finally:
        cli.kill()
    assert code != 0
    assert "tritonserver exited unexpectedly (code -9" in out
    assert "SIGKILL" in out
    assert "last lines:" in out


def _echo_stub_pid(server_pid: int) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stubs = backend_stubs(server_pid)
        if stubs:
            return next(iter(stubs))
        time.sleep(0.2)
    raise AssertionError("no Python backend stub under tritonserver")


@pytest.mark.integration
def test_cli_notices_dead_backend_stub(tmp_path: Path) -> None:
    """Triton 2.51 keeps a model 'ready' after its stub dies; the supervisor does not."""
    cli = _Cli(tmp_path)
    try:
        pid = int(cli.expect(r"tritonserver ready \(pid (\d+)\)").group(1))
        cli.expect(r"Ctrl-C or SIGTERM stops")
        os.kill(_echo_stub_pid(pid), signal.SIGKILL)
        code, out = cli.finish()
    finally:
        cli.kill()
    assert code != 0
    assert "Python backend stub" in out and "died" in out


@pytest.mark.integration
def test_cli_restarts_after_dead_stub(tmp_path: Path) -> None:
    """Regression: a restart deleted the generated key file, then announced the key as
    coming from $LONGDOC_ADMIN_KEY (unset): the operator lost the key. The run's one key
    survives restarts, unlocks the restarted server, and goes when the run ends."""
    cli = _Cli(tmp_path, "--restart=1")
    try:
        first = int(cli.expect(r"tritonserver ready \(pid (\d+)\)").group(1))
        key_file = Path(cli.expect(r"key for this run in (\S+)").group(1))
        cli.expect(r"Ctrl-C or SIGTERM stops")
        key = key_file.read_text().strip()
        os.kill(_echo_stub_pid(first), signal.SIGKILL)
        cli.expect(r"restarting \(1 of 1\)")
        second = int(cli.expect(r"tritonserver ready \(pid (\d+)\)").group(1))
        assert second != first
        again = cli.expect(r"need the key .*; (.*)$").group(1)
        assert again == f"key for this run in {key_file}", again
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert key_file.read_text().strip() == key
        assert is_ready(f"127.0.0.1:{cli.http}")
        with httpclient.InferenceServerClient(f"127.0.0.1:{cli.http}") as client:
            index = client.get_model_repository_index(headers={ADMIN_HEADER: key})
            assert [m["name"] for m in index] == ["echo"]
        cli.proc.send_signal(signal.SIGTERM)
        code, out = cli.finish()
    finally:
        cli.kill()
    assert code == 0
    assert ADMIN_KEY_ENV not in out
    assert not key_file.exists()  # a per-run key ends with the run
