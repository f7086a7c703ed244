"""Keeping the admin key out of tritonserver's command line: a placeholder in the argv, the
key in the environment, and a preloaded constructor (``argv_secret.c``) that swaps them
before ``main`` reads its flags.

Triton 2.51 takes the key only as a flag (``--http-restricted-api ...:admin-key=KEY``), and
``/proc/<pid>/cmdline`` is readable by every local user; ``/proc/<pid>/environ`` only by
the process's own user. The library is compiled once with the system C compiler into the
user's cache (``~/.cache/longdoc``, or ``$XDG_CACHE_HOME``) and reused; the GPU image builds
it at image build time into ``/opt/longdoc/argv_secret.so``. Without a compiler
``longdoc serve`` falls back to wiping the key from the child's memory once Triton has
parsed its flags (``isolation.hide_argument``), which leaves it readable for the first
moments of start-up, and says so.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SECRET_ENV = "LONGDOC_ARGV_SECRET"
IMAGE_LIBRARY = Path("/opt/longdoc/argv_secret.so")  # built ahead by the GPU image
PLACEHOLDER = "@longdoc-admin-key@"
SOURCE = Path(__file__).with_name("argv_secret.c")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "longdoc"


def library_path() -> Path:
    """Where the compiled library lives: the image's (``/opt/longdoc``), else the user's
    cache, under a name carrying the source's hash (an edited source is compiled again)."""
    if IMAGE_LIBRARY.is_file():
        return IMAGE_LIBRARY
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    return cache_dir() / f"argv_secret-{digest}.so"


def build_library(target: Path | None = None) -> Path | None:
    """The compiled library (built now if needed), or None where there is no C compiler or
    it fails: the caller then falls back to wiping the key after start-up."""
    target = Path(target) if target else library_path()
    if target.is_file():
        return target
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None or not SOURCE.is_file():
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run(
            [compiler, "-shared", "-fPIC", "-O2", "-o", str(built), str(SOURCE)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0 or not built.is_file():
            return None
        os.replace(built, target)  # atomic: concurrent starts never load half a file
    return target


def protect(env: dict[str, str], key: str, library: Path | None) -> str:
    """Set ``env`` up to hand ``key`` to the server through the library, and return what
    the command line carries instead of the key (the key itself without a library)."""
    if library is None:
        return key
    preload = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = f"{library}:{preload}" if preload else str(library)
    env[SECRET_ENV] = key
    return PLACEHOLDER


if __name__ == "__main__":  # the image builds the library where the server user finds it
    import sys

    built = build_library(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    print(built or "no C compiler: the key is wiped after start-up instead")
    sys.exit(0 if built else 1)
