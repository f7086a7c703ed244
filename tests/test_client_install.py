"""`longdoc[client]` alone is enough to classify: a fresh venv, the wheel, tritonclient.

Builds the wheel from this checkout, creates a new virtual environment (no system site
packages), installs the wheel without dependencies plus only what the ``client`` extra
names (tritonclient[grpc,http], numpy, tqdm, and what they need) from pip's configured
index, then, inside it: imports ``longdoc.client.DocumentClassifierClient``, checks that
torch, onnxruntime and tokenizers are not importable, that no module of the installed
``longdoc/client/`` (nor a ``longdoc`` module it imports) imports them, and runs
``longdoc classify`` against a real server over gRPC and HTTP.

The static scan also runs on the sources without building anything (fast layer): a
function-level import of torch in the client would pass the import probe and fail only
when that function runs on a client-only machine.
"""

from __future__ import annotations

import ast
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
PACKAGE_DIR = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
    "package-dir"
]
# what the wheel is built from (pyproject's package-dir mapping); nothing else is copied
SOURCES = ("pyproject.toml", "README.md", "longdoc", *PACKAGE_DIR.values())
HEAVY = ("torch", "onnxruntime", "tokenizers", "transformers")


def _module_file(name: str, dirs: dict[str, Path]) -> Path | None:
    """The file of module `name` under the folders that hold its packages (longest prefix)."""
    prefix = max((p for p in dirs if name == p or name.startswith(p + ".")), key=len, default=None)
    if prefix is None:
        return None
    path = dirs[prefix].joinpath(*name[len(prefix) :].split(".")[1:])
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imports(file: Path, module: str) -> set[str]:
    """Every module `file` imports, at the top or inside a function, as absolute names
    (``from a import b`` yields ``a`` and ``a.b``: b may be a module)."""
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def heavy_imports(package: str, dirs: dict[str, Path]) -> dict[str, list[str]]:
    """{module: heavy modules it imports} for every module of `package` and every `longdoc`
    module they reach by import, read with `ast` (nothing is imported)."""
    init = _module_file(package, dirs)
    assert init is not None and init.name == "__init__.py", f"{package}: no package there"
    start = init.parent
    todo = [
        ".".join([package, *f.relative_to(start).with_suffix("").parts]).removesuffix(".__init__")
        for f in sorted(start.rglob("*.py"))
    ]
    seen: set[str] = set()
    found: dict[str, list[str]] = {}
    while todo:
        module = todo.pop()
        file = _module_file(module, dirs)
        if module in seen or file is None:
            continue
        seen.add(module)
        imported = _imports(file, module)
        heavy = sorted({n for n in imported if n.split(".")[0] in HEAVY})
        if heavy:
            found[module] = heavy
        todo.extend(n for n in imported if n.split(".")[0] == "longdoc")
    return found


def source_dirs() -> dict[str, Path]:
    """Where each part of the `longdoc` package lives in this checkout (package-dir)."""
    return {"longdoc": ROOT / "longdoc", **{k: ROOT / v for k, v in PACKAGE_DIR.items()}}


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
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(src),
        ]
    )
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
    installed = Path(facts["file"]).parent  # site-packages/longdoc
    assert (installed / "client" / "classifier.py").is_file()
    assert heavy_imports("longdoc.client", {"longdoc": installed}) == {}

    repo, _ = export_repo(preset="tiny")
    served = serve(repo)
    docs = tmp_path / "docs.jsonl"
    texts = [corpus.document(n, seed=n) for n in (80, 900)]
    docs.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    )
    longdoc = str(client_venv / "bin" / "longdoc")
    for protocol in ("grpc", "http"):
        out = _run(
            [
                longdoc,
                "classify",
                str(docs),
                "--protocol",
                protocol,
                "--url",
                served.url(protocol),
                "--no-progress",
                "--top-k",
                "1",
            ],
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
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


def test_client_package_imports_nothing_heavy():
    """No module of `longdoc.client`, nor a `longdoc` module it imports (even inside a
    function), imports torch, onnxruntime, transformers or tokenizers: the benchmark, which
    does, lives in `longdoc.bench`, outside the client package."""
    dirs = source_dirs()
    assert heavy_imports("longdoc.client", dirs) == {}
    # the scan sees what it must: the benchmark reaches onnxruntime (longdoc.runtime)
    assert "longdoc.runtime" in heavy_imports("longdoc.bench", dirs)
    assert not (dirs["longdoc.client"] / "bench").exists()
