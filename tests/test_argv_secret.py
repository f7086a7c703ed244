"""The admin key never reaches a command line: `longdoc.server.argv_secret` (unit layer:
a real compiled library and a real child process, no server)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from longdoc.server.argv_secret import PLACEHOLDER, SECRET_ENV, build_library, protect

KEY = "k" * 8 + "0123456789abcdef"
# The probe learns the key from its parsed argv only (a literal key in its own code would be
# in its command line): what main() sees, then whether /proc shows it to others.
PROBE = (
    "import os, sys; "
    "key = sys.argv[1].rsplit('=', 1)[1].encode(); "
    "print(sys.argv[1]); "
    "print(key in open('/proc/self/cmdline', 'rb').read()); "
    "print(key in open('/proc/self/environ', 'rb').read()); "
    f"print(os.environ.get('{SECRET_ENV}'))"
)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    built = build_library(tmp_path_factory.mktemp("lib") / "argv_secret.so")
    if built is None:
        pytest.skip("no C compiler: longdoc serve falls back to wiping the key after start-up")
    return built


def run_probe(env: dict[str, str], argument: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, argument], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_the_program_reads_the_key_that_no_other_user_can_see(library):
    env = dict(os.environ)
    shown = protect(env, KEY, library)
    assert shown == PLACEHOLDER and KEY not in env.get("LD_PRELOAD", "")
    argv, in_cmdline, in_environ, variable = run_probe(env, f"--flag=apis:admin-key={shown}")
    assert argv == f"--flag=apis:admin-key={KEY}"  # what main() parses
    assert in_cmdline == "False"  # what `ps` and /proc/<pid>/cmdline show every user
    assert in_environ == "False"  # wiped in place: not even the owner reads it back
    assert variable == "None"  # unset: children (the Python backend's stubs) never get it


def test_without_the_library_the_key_is_on_the_command_line():
    """The fallback (no compiler) and the reason for the library: this fails if the
    probe itself could not see a key in its command line."""
    env = dict(os.environ)
    shown = protect(env, KEY, None)
    assert shown == KEY and SECRET_ENV not in env
    argv, in_cmdline, _, _ = run_probe(env, f"--flag=apis:admin-key={shown}")
    assert argv.endswith(KEY) and in_cmdline == "True"


def test_the_library_is_built_once_and_reused(library):
    stamp = library.stat().st_mtime_ns
    assert build_library(library) == library
    assert library.stat().st_mtime_ns == stamp
