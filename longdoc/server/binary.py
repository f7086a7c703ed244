"""Finding the `tritonserver` to run, and what it needs to run here.

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
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from functools import lru_cache
from pathlib import Path

from longdoc.contract import ENV_PREFIX

CACHE_DIR_ENV = ENV_PREFIX + "CACHE_DIR"

# Written last into a prepared pytriton install: its presence means the copy is complete.
_MARKER = ".longdoc-pytriton"


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
        "pip install 'longdoc[triton]' (nvidia-pytriton) or put Triton's bin/ on PATH"
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


def launch_env(binary: Path) -> tuple[dict[str, str], list[str]]:
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


@lru_cache(maxsize=8)
def help_text(binary: str, ld_library_path: str) -> str:
    """`tritonserver --help`, to ask the build which flags it knows."""
    env = dict(os.environ, LD_LIBRARY_PATH=ld_library_path)
    try:
        out = subprocess.run(
            [binary, "--help"], env=env, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout + out.stderr
