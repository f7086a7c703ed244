"""Shared fixtures: real tokenizer, real MiniLM weights, real text, exported repositories."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LABELS = ["contract", "filing", "report"]

# Test layers. `make test-fast` runs `-m "not integration and not slow"` (unit tests, under a
# minute); `make test` runs everything. A test that starts a tritonserver or exports a real
# model is an integration test, by construction:
# * it is marked from the fixtures it uses (directly or through other fixtures), so new
#   tests land in the right layer without remembering to; a module's own fixture that
#   starts a server or exports joins the set with `@integration_fixture`;
# * in a test left unmarked, starting `longdoc serve`/tritonserver or exporting anything
#   but the tiny preset fails at once with `LayerError` (`pytest_configure` below), so a
#   fixture that forgot the decorator cannot slow the fast layer down unnoticed.
INTEGRATION_FIXTURES = {"serve", "export_repo", "classifier_checkpoint"}


def integration_fixture(*args, **kwargs):
    """`pytest.fixture` that also marks every test using it as `integration`."""

    def wrap(function):
        INTEGRATION_FIXTURES.add(kwargs.get("name") or function.__name__)
        return pytest.fixture(*args, **kwargs)(function)

    return wrap


class LayerError(AssertionError):
    """A unit-layer test started a server or exported a real model."""


def starts_a_server(argv) -> bool:
    """Whether a command line runs tritonserver or `longdoc serve` (`--help` does not)."""
    words = [str(a) for a in (argv if isinstance(argv, list | tuple) else [argv])]
    if "--help" in words or "-h" in words:
        return False
    if any(Path(w).name == "tritonserver" for w in words):
        return True
    for i, word in enumerate(words[:-1]):
        if (word in ("longdoc.cli", "longdoc") or word.endswith("/longdoc")) and (
            words[i + 1] == "serve"
        ):
            return True
    return False


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


# The test being set up or run: the guards below ask whether it is an integration test
# (module and session fixtures are set up inside the first test that needs them).
_CURRENT: dict = {"item": None}


def pytest_runtest_setup(item) -> None:
    _CURRENT["item"] = item


def _refuse_outside_integration(what: str) -> None:
    item = _CURRENT["item"]
    if item is None or item.get_closest_marker("integration"):
        return
    # runs `longdoc serve` with settings it must refuse before starting anything
    if what == "starts a server" and item.get_closest_marker("serve_refuses"):
        return
    raise LayerError(
        f"{item.nodeid} {what} but is not marked integration (use a fixture in "
        "INTEGRATION_FIXTURES, @integration_fixture or @pytest.mark.integration)"
    )


def pytest_configure(config) -> None:
    """Guard the unit layer: starting a server or exporting a real model in a test that is
    not marked `integration` raises `LayerError`."""
    import subprocess

    class GuardedPopen(subprocess.Popen):
        def __init__(self, args, *rest, **kwargs):
            if starts_a_server(args):
                _refuse_outside_integration("starts a server")
            super().__init__(args, *rest, **kwargs)

    subprocess.Popen = GuardedPopen
    try:
        from longdoc.export import to_onnx
    except ImportError:  # a client-only install exports nothing
        return
    real_export = to_onnx.export_encoder

    def guarded_export(model, *args, **kwargs):
        # refusals before this point (bad flags, bad checkpoints) stay unit tests
        if model.source != "preset:tiny":
            _refuse_outside_integration(f"exports {model.source}")
        return real_export(model, *args, **kwargs)

    to_onnx.export_encoder = guarded_export


@pytest.fixture(scope="session")
def minilm() -> Path:
    from longdoc.checkpoint import minilm_dir

    return minilm_dir()


@pytest.fixture(scope="session")
def tokenizer(minilm):
    from longdoc.chunking import load_tokenizer

    return load_tokenizer(minilm)


@pytest.fixture(scope="session")
def classifier_checkpoint(tmp_path_factory, minilm) -> Path:
    """A BertForSequenceClassification directory: real MiniLM encoder, seeded classifier."""
    from longdoc.checkpoint import make_classifier_checkpoint

    return make_classifier_checkpoint(tmp_path_factory.mktemp("ckpt") / "cls", LABELS, seed=3)


@pytest.fixture(scope="session")
def export_repo(tmp_path_factory):
    """Export once per (source, head, precision, profile) and share across tests."""
    from longdoc.export.pipeline import ExportSpec, run

    cache: dict = {}

    def make(
        checkpoint=None,
        preset=None,
        head=None,
        precision="fp32",
        profile="portable",
        random_head=False,
        **chunking,
    ):
        key = (
            str(checkpoint),
            preset,
            head,
            precision,
            profile,
            random_head,
            tuple(sorted(chunking.items())),
        )
        if key not in cache:
            out = tmp_path_factory.mktemp("repo")
            spec = ExportSpec(
                output=out,
                checkpoint=checkpoint,
                preset=preset,
                head=head,
                precision=precision,
                profile=profile,
                random_head=random_head,
                num_labels=3,
                chunking=chunking,
            )
            cache[key] = (out, run(spec, log=lambda *_: None))
        return cache[key]

    return make


def serve_command(repo: Path, ports: tuple[int, int, int], log: Path, *extra: str) -> list[str]:
    """`longdoc serve` on ``(http, grpc, metrics)`` ports, the way users run it."""
    import sys

    http, grpc, metrics = ports
    return [
        sys.executable,
        "-m",
        "longdoc.cli",
        "serve",
        "--repository",
        str(repo),
        "--http-port",
        str(http),
        "--grpc-port",
        str(grpc),
        "--metrics-port",
        str(metrics),
        "--log",
        str(log),
        *extra,
    ]


class Served:
    """A `longdoc serve` subprocess on free ports (the way users run it)."""

    def __init__(self, repo: Path, log_dir: Path, extra: tuple[str, ...] = ()) -> None:
        import subprocess

        from longdoc.server.probe import free_ports, wait_ready

        self.repo = repo
        self.admin_key = "test-admin-key-" + os.urandom(6).hex()
        http, grpc, metrics = free_ports(3)
        self.http_url, self.grpc_url = f"127.0.0.1:{http}", f"127.0.0.1:{grpc}"
        self.metrics_url = f"127.0.0.1:{metrics}"
        self.log = log_dir / f"triton-{http}.log"
        env = {**os.environ, "LONGDOC_ADMIN_KEY": self.admin_key}
        self.process = subprocess.Popen(
            serve_command(repo, (http, grpc, metrics), self.log, *extra),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if not wait_ready(self.http_url, timeout=180, alive=lambda: self.process.poll() is None):
            self.stop()
            raise RuntimeError(f"server did not become ready:\n{self.output()}")

    def url(self, protocol: str) -> str:
        return self.grpc_url if protocol == "grpc" else self.http_url

    def output(self) -> str:
        tail = self.log.read_text()[-4000:] if self.log.exists() else ""
        return tail

    def stop(self) -> None:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except Exception:
                self.process.kill()


@pytest.fixture(scope="session")
def serve(tmp_path_factory):
    """``serve(repo, *extra_args) -> Served``; every server is stopped at the end."""
    started: list[Served] = []

    def start(repo: Path, *extra: str) -> Served:
        served = Served(repo, tmp_path_factory.mktemp("logs"), extra)
        started.append(served)
        return served

    yield start
    # SIGTERM every server first, then wait: each drains in parallel with the others
    import signal

    for served in started:
        if served.process.poll() is None:
            served.process.send_signal(signal.SIGTERM)
    for served in started:
        served.stop()


def build_linux_doc_deb(directory: Path, files: dict[str, bytes]) -> Path:
    """A real .deb in the layout of Debian's linux-doc-6.1: ``files`` maps paths under
    ``usr/share/doc/linux-doc-6.1/`` to their bytes (skips the test without dpkg-deb)."""
    import shutil

    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb is not installed")
    root = Path(directory) / "linux-doc-6.1_0.0-1_all"
    doc = root / "usr" / "share" / "doc" / "linux-doc-6.1"
    for rel, content in files.items():
        target = doc / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: linux-doc-6.1\nVersion: 0.0-1\nArchitecture: all\n"
        "Maintainer: tests <tests@example.invalid>\nDescription: fixture\n"
    )
    out = root.with_suffix(".deb")
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", str(root), str(out)],
        check=True,
        capture_output=True,
    )
    return out
