"""`longdoc[client]` alone is enough to classify: a fresh venv, the wheel, tritonclient.

Builds the wheel from this checkout, creates a new virtual environment (no system site
packages), installs the wheel without dependencies plus only what the ``client`` extra
names (tritonclient[grpc,http], numpy, tqdm, and what they need) from pip's configured
index, then, inside it: imports ``longdoc.client.DocumentClassifierClient``, checks that
torch, onnxruntime and tokenizers are not importable, and runs ``longdoc classify`` against
a real server over gRPC and HTTP.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from longdoc import corpus

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
# what the wheel is built from (pyproject's package-dir mapping); nothing else is copied
SOURCES = ("pyproject.toml", "README.md", "longdoc", "client", "export", "model_repository")
HEAVY = ("torch", "onnxruntime", "tokenizers", "transformers")


def _requirements() -> list[str]:
    """The client extra's pins and the base dependencies, as pyproject states them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["client"]]


def _run(cmd: list, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert out.returncode == 0, f"{cmd}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("client_install")
    src = work / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.onnx", "*.egg-info", "build", "*.pyc")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        elif path.is_file():
            shutil.copy2(path, src / name)
    wheels = work / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(wheels), str(src)])  # fmt: skip
    (wheel,) = wheels.glob("longdoc-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, "--no-deps", str(wheel)])
    _run([*pip, *_requirements()])
    return venv


@pytest.mark.slow  # ~70 s on 2 cores: a venv and a pip install
def test_client_extra_alone_classifies(client_venv, export_repo, serve, tmp_path):
    python = str(client_venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    probe = (
        "import importlib.util, json, sys\n"
        "from longdoc.client import DocumentClassifierClient\n"
        "import longdoc.cli, longdoc.client.cli, longdoc.client.transport\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps({'missing': [m for m in heavy if importlib.util.find_spec(m) is None],"
        " 'loaded': [m for m in heavy if m in sys.modules],"
        " 'client': DocumentClassifierClient.__module__, 'file': longdoc.cli.__file__}))\n"
    )
    facts = json.loads(_run([python, "-c", probe], env=env, cwd=tmp_path).stdout)
    assert facts["missing"] == list(HEAVY), facts  # none of them is installed there
    assert facts["client"] == "longdoc.client.classifier"
    assert str(client_venv) in facts["file"]  # the wheel, not this checkout

    repo, _ = export_repo(preset="tiny")
    served = serve(repo)
    docs = tmp_path / "docs.jsonl"
    texts = [corpus.document(n, seed=n) for n in (80, 900)]
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                            for i, t in enumerate(texts)))  # fmt: skip
    longdoc = str(client_venv / "bin" / "longdoc")
    for protocol in ("grpc", "http"):
        out = _run([longdoc, "classify", str(docs), "--protocol", protocol,
                    "--url", served.url(protocol), "--no-progress", "--top-k", "1"],
                   env=env, cwd=tmp_path, timeout=120)  # fmt: skip
        records = [json.loads(line) for line in out.stdout.splitlines()]
        assert [r["id"] for r in records] == ["d0", "d1"], out.stderr
        assert all(r["label"] and r["num_chunks"] >= 1 for r in records)
    help_text = _run([longdoc, "--help"], env=env, cwd=tmp_path, timeout=60).stdout
    assert "classify" in help_text


def test_extras_by_role():
    """No extra but `triton` (and `all`) pulls a tritonserver: the GPU image installs
    `serve` next to NVIDIA's own Triton, a laptop gets one from `triton`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def names(extra: str) -> set[str]:
        return {req.split("[")[0].split("=")[0].strip() for req in extras[extra]}

    assert "nvidia-pytriton" in names("triton") and "longdoc" in names("triton")
    for role in ("client", "serve", "export", "train", "bench"):
        assert "nvidia-pytriton" not in names(role), role
    assert "triton" in extras["all"][0] and "serve" in extras["all"][0]
    assert names("client") == {"tritonclient"}
