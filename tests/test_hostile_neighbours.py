"""Hostile clients and neighbours (issue 18, items 1, 4, 6 and the launcher's Low items).

* compressed bombs: Triton 2.51 inflates gzip/deflate bodies without a bound, so the
  nginx front of deploy/nginx/longdoc.conf refuses compressed requests; real nginx in
  front of a real server, tritonserver's peak RSS measured;
* other local users: the admin key is wiped from tritonserver's command line, and the
  Python backend's /dev/shm regions (the documents) live on a private /dev/shm;
* a stopped or killed stub: `longdoc serve --restart` stops the server at once and
  restarts it; documents lost with default client settings: 0; the log of the dead server
  kept; no stub or region of it left;
* the key file is created exclusively, without following links; abbreviations of the
  lock-down flags are refused.

Figures go to reliability_results/hostile_neighbours.json (RELIABILITY.md, "Hostile
clients and neighbours").
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import shutil
import stat
import subprocess
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import integration_fixture
from loadgen import save_results
from longdoc.client.classifier import DocumentClassifierClient

from longdoc import corpus
from longdoc.server.lockdown import check_triton_args, generate_admin_key
from longdoc.server.probe import free_ports, wait_ready

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[1]
NGINX_EXAMPLE = ROOT / "deploy" / "nginx" / "longdoc.conf"
RESULTS = "hostile_neighbours.json"
BOMB_TEXT_MB = 200  # the reproduction: 200 MB of "a " in a KServe v2 JSON request
GRPC_BOMB_MB = 50
RSS_GROWTH_MB = 100  # tritonserver's peak RSS may grow this much behind the front (was +800)
RECOVERY_S = 25.0  # stub lost -> answers again (was ~35 s: 20 s exit timeout + restart)


# --------------------------------------------------------------------------- Low items


def test_key_file_is_created_exclusively_without_following_links(tmp_path):
    """A shared log folder: a symlink planted at the key file's name must not be followed
    (the key would land where its owner can read it), a file of another user or with
    other links is refused, and only our own leftover of a killed run is replaced."""
    log = tmp_path / "tritonserver.log"
    key_path = log.with_suffix(".admin-key")
    target = tmp_path / "planted"
    target.write_text("")
    key_path.symlink_to(target)
    with pytest.raises(ValueError, match="refusing"):
        generate_admin_key(log)
    assert target.read_text() == "" and key_path.is_symlink()
    key_path.unlink()

    os.link(target, key_path)  # a hard link to a file someone else can read
    with pytest.raises(ValueError, match="refusing"):
        generate_admin_key(log)
    assert target.read_text() == ""
    key_path.unlink()

    if os.geteuid() == 0:  # a file of another user
        key_path.write_text("")
        os.chown(key_path, 65534, 65534)
        with pytest.raises(ValueError, match="refusing"):
            generate_admin_key(log)
        key_path.unlink()

    key_path.write_text("stale")  # our own leftover (a killed run): replaced, 0600
    key_path.chmod(0o644)
    key = generate_admin_key(log)
    assert key_path.read_text().strip() == key.value
    assert stat.S_IMODE(os.lstat(key_path).st_mode) == 0o600


def test_abbreviated_lock_down_flags_are_refused():
    """Triton's getopt_long takes unambiguous prefixes: `--model-control=explicit` is
    `--model-control-mode=explicit`. Every prefix of a fixed flag is refused."""
    for bad in (
        "--model-control=explicit",
        "--model-contr=explicit",
        "--load-mod=*",
        "--load=x",
        "--http-restricted=trace:k=v",
        "--grpc-restricted-proto=trace:k=v",
        "--model-repo=/tmp",
        "--repository-poll=1",
        "-model-control-mode=explicit",
    ):
        with pytest.raises(ValueError, match="cannot be overridden"):
            check_triton_args([bad])
    check_triton_args(
        [
            "--log-verbose=1",
            "--exit-timeout-secs=5",
            "--backend-config=python,shm-default-byte-size=1048576",
            "--http-thread-count=4",
        ]
    )


def test_nginx_example_refuses_compressed_requests_on_both_protocols():
    """The example front (offline): body limit, and compressed requests refused on the
    HTTP inference path and on gRPC ModelInfer."""
    conf = NGINX_EXAMPLE.read_text()
    assert "client_max_body_size 8m;" in conf
    assert conf.count('if ($http_content_encoding !~* "^(identity)?$")') == 2
    assert conf.count('if ($http_grpc_encoding !~* "^(identity)?$")') == 1
    assert "proxy_pass http://longdoc_http;" in conf and "grpc_pass grpc://longdoc_grpc;" in conf


# --------------------------------------------------------------------------- one server


@integration_fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    from longdoc.export.pipeline import ExportSpec, run

    out = tmp_path_factory.mktemp("neighbours_repo")
    run(ExportSpec(output=out, preset="tiny", num_labels=3), log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def served(repo, serve):
    # --restart: the stub tests restart it; the other tests run before them
    return serve(repo, "--restart", "4")


def tritonserver(served) -> psutil.Process:
    (server,) = [
        p
        for p in psutil.Process(served.process.pid).children(recursive=True)
        if p.name() == "tritonserver"
    ]
    return server


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024


def kserve_body(text: str) -> bytes:
    inputs = [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": [text]}]
    return json.dumps({"inputs": inputs}).encode()


NGINX_MAIN = """
{user}worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {conf};
}}
"""


def nginx_front(served, tmp_path: Path) -> tuple[subprocess.Popen, str, str]:
    """Real nginx running deploy/nginx/longdoc.conf (addresses and ports replaced)."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    http_port, grpc_port = free_ports(2)
    conf = NGINX_EXAMPLE.read_text()
    for old, new in (
        ("server 127.0.0.1:8000;", f"server {served.http_url};"),
        ("server 127.0.0.1:8001;", f"server {served.grpc_url};"),
        ("listen 8080;", f"listen 127.0.0.1:{http_port};"),
        ("listen 8081 http2;", f"listen 127.0.0.1:{grpc_port} http2;"),
    ):
        assert old in conf, old
        conf = conf.replace(old, new)
    (tmp_path / "longdoc.conf").write_text(conf)
    main = tmp_path / "nginx.conf"
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    main.write_text(
        NGINX_MAIN.format(
            user="user root;\n" if root else "", tmp=tmp_path, conf=tmp_path / "longdoc.conf"
        )
    )
    proxy = subprocess.Popen(
        [nginx, "-c", str(main), "-p", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    front_http = f"127.0.0.1:{http_port}"
    if not wait_ready(front_http, timeout=30, alive=lambda: proxy.poll() is None):
        proxy.kill()
        pytest.fail(f"nginx did not start: {proxy.stderr.read().decode()}")
    return proxy, front_http, f"127.0.0.1:{grpc_port}"


def test_compressed_bombs_are_refused_in_front_and_memory_stays(served, tmp_path):
    """A ~200 KB gzip (and deflate) HTTP body of 200 MB of text, and a gRPC request of
    50 MB sent with gzip compression, through the nginx example: refused with 415 before
    Triton inflates them (without the refusal tritonserver's peak RSS went 48 -> 852 MB),
    while an ordinary document passes the same front on both protocols."""
    import tritonclient.grpc as grpcclient

    proxy, front_http, front_grpc = nginx_front(served, tmp_path)
    server = tritonserver(served)
    try:
        good = corpus.document(300, seed=7)
        for protocol, url in (("http", front_http), ("grpc", front_grpc)):
            (result,) = DocumentClassifierClient(url, protocol, timeout_s=60).classify([good])
            assert result.ok, (protocol, result.error)
        before = peak_rss_mb(server.pid)
        raw = kserve_body("a " * (BOMB_TEXT_MB * 2**20 // 2))
        answers = {}
        for encoding, compress in (("gzip", gzip.compress), ("deflate", zlib.compress)):
            body = compress(raw)
            host, port = front_http.split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=120)
            conn.request(
                "POST",
                "/v2/models/document_classifier/infer",
                body=body,
                headers={"Content-Encoding": encoding, "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            response.read()
            conn.close()
            answers[f"http {encoding} ({len(body) // 1024} KB)"] = response.status
        del raw
        client = grpcclient.InferenceServerClient(front_grpc)
        text = grpcclient.InferInput("TEXT", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"a " * (GRPC_BOMB_MB * 2**20 // 2)], dtype=object))
        try:
            client.infer("document_classifier", [text], compression_algorithm="gzip")
            answers["grpc gzip"] = "answered"
        except Exception as exc:
            answers["grpc gzip"] = str(exc)[:160]
        finally:
            client.close()
        time.sleep(1)
        after = peak_rss_mb(server.pid)
        figures = {
            "front": str(NGINX_EXAMPLE.relative_to(ROOT)),
            "answers": answers,
            "tritonserver_peak_rss_mb": {"before": round(before, 1), "after": round(after, 1)},
            "load_average": os.getloadavg(),
        }
        save_results(RESULTS, "compressed_bombs", figures)
        assert all(v == 415 for k, v in answers.items() if k.startswith("http")), figures
        assert "415" in str(answers["grpc gzip"]), figures
        assert after - before < RSS_GROWTH_MB, figures
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)


def test_documents_and_key_hidden_from_other_local_users(served):
    """The key was never in /proc/<tritonserver>/cmdline (a placeholder there, the key
    handed over by the preloaded argv_secret library; wiped once read where there is no C
    compiler), nor in its stubs' environment, and the Python backend's regions are not on
    the host's /dev/shm: tritonserver has a private one, mode 0700, where namespaces are
    allowed. The key still works (the `served` fixture's admin calls use it)."""
    from longdoc.server.argv_secret import PLACEHOLDER, build_library

    server = tritonserver(served)
    cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode()
    assert served.admin_key not in cmdline
    shown = PLACEHOLDER if build_library() else "*" * len(served.admin_key)
    assert f"admin-key={shown}" in cmdline
    for process in [server, *server.children()]:
        environ = Path(f"/proc/{process.pid}/environ").read_bytes()
        assert served.admin_key.encode() not in environ, process.name()
    prefix = re.search(r"shm-region-prefix-name=(\S+?)\x00", cmdline).group(1)
    (result,) = DocumentClassifierClient(served.grpc_url, "grpc").classify(["some text " * 50])
    assert result.ok, result.error
    assert not list(Path("/dev/shm").glob(prefix + "*")), "regions on the host's /dev/shm"
    private = Path(f"/proc/{server.pid}/root/dev/shm")
    assert private.stat().st_dev != Path("/dev/shm").stat().st_dev
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert list(private.glob(prefix + "*")), "the stubs' regions should be there"


def _stub(server: psutil.Process, model: str) -> psutil.Process:
    for child in server.children():
        if child.name().startswith("triton_python") and f"/{model}/" in child.cmdline()[1]:
            return child
    raise AssertionError(f"no {model} stub")


@pytest.mark.parametrize("fault", ["sigstop-10s", "kill"])
def test_lost_stub_recovers_fast_and_loses_no_document(served, fault):
    """SIGSTOP the aggregator stub for 10 s, or SIGKILL it, while clients with default
    settings (retries until each document's deadline) classify 240 documents: none is
    lost, the server answers again within RECOVERY_S (it was ~35 s: tritonserver waited its
    whole exit timeout for a model it could not unload), the dead server's log is kept
    above a separator, and no stub or /dev/shm region of the dead server is left."""
    server = tritonserver(served)
    stub = _stub(server, "aggregator")
    old_prefix = re.search(
        r"shm-region-prefix-name=(\S+?)\x00", "\x00".join(server.cmdline()) + "\x00"
    )
    docs = [corpus.document(150 + 37 * (i % 13), seed=900 + i) for i in range(240)]
    results: dict[str, list] = {}
    probes: list[tuple[float, bool]] = []
    stop = threading.Event()
    fault_at: list[float] = []

    def probe() -> None:
        client = DocumentClassifierClient(served.grpc_url, "grpc", retries=0, timeout_s=5)
        while not stop.is_set():
            sent = time.monotonic()
            try:
                ok = client.classify([docs[0]])[0].ok
            except Exception:
                ok = False
            probes.append((sent, ok))
            time.sleep(0.2)

    def inject() -> None:
        time.sleep(1.0)
        fault_at.append(time.monotonic())
        if fault == "kill":
            stub.kill()
            return
        stub.suspend()
        time.sleep(10)
        try:
            stub.resume()
        except psutil.NoSuchProcess:
            pass

    def load(protocol: str, url: str, part: list[str]) -> None:
        results[protocol] = DocumentClassifierClient(url, protocol).classify(part, concurrency=8)

    threads = [
        threading.Thread(target=probe, daemon=True),
        threading.Thread(target=inject, daemon=True),
        threading.Thread(target=load, args=("grpc", served.grpc_url, docs[:120])),
        threading.Thread(target=load, args=("http", served.http_url, docs[120:])),
    ]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join(240)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(ok and t > fault_at[0] + 1 for t, ok in probes):
        time.sleep(0.5)
    time.sleep(1)
    stop.set()
    threads[0].join(10)
    t0 = fault_at[0]
    failed_after = [t for t, ok in probes if not ok and t >= t0]
    last_failure = max(failed_after, default=t0)
    recovered = min((t for t, ok in probes if ok and t > last_failure), default=None)
    answers = results["grpc"] + results["http"]
    lost = [r.error for r in answers if not r.ok]
    log = served.log.read_text(errors="replace")
    new_server = tritonserver(served)
    leftovers = [p.pid for p in psutil.process_iter(["name"]) if p.pid == stub.pid]
    figures = {
        "fault": fault,
        "documents": len(answers),
        "lost": len(lost),
        "errors": lost[:5],
        "fault_to_recovered_s": None if recovered is None else round(recovered - t0, 1),
        "restart_separators_in_log": log.count("===== longdoc serve"),
        "old_stub_left": leftovers,
        "load_average": os.getloadavg(),
    }
    save_results(RESULTS, f"stub_{fault}", figures)
    assert not lost, figures
    assert recovered is not None and recovered - t0 < RECOVERY_S, figures
    assert new_server.pid != server.pid, figures
    assert "Started HTTPService" in log.split("===== longdoc serve")[0], "old log lost"
    assert figures["restart_separators_in_log"] >= 1
    assert not leftovers, figures
    if old_prefix:
        assert not list(Path("/dev/shm").glob(old_prefix.group(1) + "*")), figures
