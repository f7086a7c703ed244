"""The server's lock-down rules, in one place: the admin key, what it guards, what is fixed.

* The admin APIs (`ADMIN_APIS`) always need the key; `OPTIONAL_RESTRICTED_APIS` can be put
  behind it too. Triton takes one `--http-restricted-api` / `--grpc-restricted-protocol`
  flag of the form `<api>,<api>:<header>=<key>`.
* What a key may hold (`check_admin_key`). Triton's parser (`ParseGenericConfigOption` in
  its command_line_parser.cc) splits that flag at the *first* `:` and the first `=` after
  it, and takes the rest as the key, so `:`, `,` and `=` in a key are fine (tested with the
  real binary, base64 padding included). What limits a key is the transport: gRPC metadata
  values are printable ASCII and HTTP strips surrounding whitespace, so a key is visible
  ASCII (no spaces, no control characters, nothing beyond ASCII), at least 16 of them.
* Where the key comes from (`resolve_admin_key`): `--admin-key-file`, or `$LONGDOC_ADMIN_KEY`,
  never both; else one generated per run (unless required), written to a 0600 file.
* The tritonserver flags a caller may not pass, because they would undo the lock-down
  (`check_triton_args`), and the environment variables kept from tritonserver and its
  Python-backend stubs (`child_env`).
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from longdoc.contract import ADMIN_HEADER, ADMIN_KEY_ENV, ENV_PREFIX

ADMIN_APIS = ("model-repository", "shared-memory", "logging", "trace")
# Triton's other API groups; any of them can also be put behind the key: statistics and
# model-config tell a caller request counts, timings and the model's layout. `health`
# covers /v2/health/* (the readiness probe then sends the key, see `probe_headers`).
OPTIONAL_RESTRICTED_APIS = ("statistics", "model-config", "metadata", "health", "inference")
ADMIN_KEY_FILE_ENV = ENV_PREFIX + "ADMIN_KEY_FILE"  # --admin-key-file's variable
KEY_MIN_LENGTH = 16
# tritonserver flags fixed by the launcher: the model set is fixed at start-up and the
# restrictions are the launcher's.
FIXED_TRITON_FLAGS = (
    "--model-control-mode",
    "--load-model",
    "--repository-poll-secs",
    "--http-restricted-api",
    "--grpc-restricted-protocol",
    "--model-repository",
    "--model-store",
)


def check_admin_key(key: str, source: str = "admin key") -> None:
    """The one rule for a key: at least 16 visible ASCII characters (ValueError otherwise)."""
    if len(key) < KEY_MIN_LENGTH:
        raise ValueError(
            f"{source}: the admin key is too short ({len(key)} characters, need at least "
            f"{KEY_MIN_LENGTH}; e.g. openssl rand -hex 32)"
        )
    bad = sorted({c for c in key if not ("!" <= c <= "~")})
    if bad:
        raise ValueError(
            f"{source}: the admin key may hold only visible ASCII characters, no spaces "
            f"(found {', '.join(repr(c) for c in bad)})"
        )


@dataclass(frozen=True)
class AdminKey:
    """The key, where it came from (for messages) and the file it was generated into."""

    value: str = field(repr=False)
    source: str
    generated_file: Path | None = None

    def discard(self) -> None:
        """Delete the generated file (a per-run key is useless once the run is over)."""
        if self.generated_file is not None:
            self.generated_file.unlink(missing_ok=True)


def given_key(key: str | AdminKey) -> AdminKey:
    """A key handed over in code, checked."""
    if isinstance(key, AdminKey):
        check_admin_key(key.value, key.source)
        return key
    check_admin_key(key)
    return AdminKey(key, "given by the caller")


def resolve_admin_key(
    key_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> AdminKey | None:
    """The key from `key_file`, else from $LONGDOC_ADMIN_KEY, else None (generate one).

    Both at once is refused: with every flag also read from the environment
    ($LONGDOC_ADMIN_KEY_FILE), which one wins would be a guess.
    """
    environ = os.environ if environ is None else environ
    from_env = environ.get(ADMIN_KEY_ENV, "").strip()
    if key_file is not None:
        if from_env:
            raise ValueError(
                f"set --admin-key-file (${ADMIN_KEY_FILE_ENV}) or ${ADMIN_KEY_ENV}, not both"
            )
        path = Path(key_file)
        if not path.is_file():
            raise ValueError(f"admin key file {path} is not a readable file")
        key = AdminKey(path.read_text().strip(), f"key from {path}")
    elif from_env:
        key = AdminKey(from_env, f"key from ${ADMIN_KEY_ENV}")
    else:
        return None
    check_admin_key(key.value, key.source)
    return key


def generate_admin_key(next_to: str | os.PathLike[str] | None = None) -> AdminKey:
    """A random key, in a 0600 file beside the log `next_to` (`<log stem>.admin-key`), or in
    a new private temporary directory when there is no log file."""
    if next_to is not None:
        path = Path(next_to).with_suffix(".admin-key")
    else:
        path = Path(tempfile.mkdtemp(prefix="longdoc-")) / "tritonserver.admin-key"
    value = secrets.token_urlsafe(32)
    _write_secret(path, value)
    return AdminKey(value, f"key for this run in {path}", generated_file=path)


def admin_key_for_run(
    key_file: str | os.PathLike[str] | None, *, required: bool = False
) -> AdminKey | None:
    """The key a whole `longdoc serve` run uses, restarts included, when one is given; None
    means "generate one" (`generate_admin_key`), which `required` refuses instead."""
    key = resolve_admin_key(key_file)
    if key is None and required:
        raise ValueError(
            f"no admin key: set ${ADMIN_KEY_ENV} or --admin-key-file (${ADMIN_KEY_FILE_ENV}, "
            "e.g. a mounted secret); a key is required here (--require-admin-key)"
        )
    return key


def _write_secret(path: Path, text: str) -> None:
    """Write `text` to a new file only its owner can read (mode 0600).

    The log folder may be shared (/tmp, a team's log directory): another user could put a
    symlink or a file of theirs at this name beforehand, to have the key written where they
    can read it. So the file is created exclusively and without following links
    (O_CREAT | O_EXCL | O_NOFOLLOW). A leftover of our own from a run that was killed (a
    regular file we own, one link) is removed first; anything else is refused.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
            raise ValueError(
                f"{path} exists and is not a leftover key file of ours (a link, another "
                "user's file, or not a regular file): refusing to write the admin key there; "
                "remove it or choose another --log folder"
            ) from None
        path.unlink()
        fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def restricted_apis(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The admin APIs plus `extra` (names, or comma-separated lists of them): what needs
    the key. ValueError names an unknown API."""
    wanted = {a.strip() for item in extra for a in item.split(",") if a.strip()}
    unknown = sorted(wanted - set(OPTIONAL_RESTRICTED_APIS) - set(ADMIN_APIS))
    if unknown:
        raise ValueError(
            f"unknown API {', '.join(unknown)}; choose from {', '.join(OPTIONAL_RESTRICTED_APIS)}"
        )
    return ADMIN_APIS + tuple(a for a in OPTIONAL_RESTRICTED_APIS if a in wanted)


def restriction_flags(apis: Sequence[str], key: str) -> list[str]:
    """The two tritonserver flags that put `apis` behind `key` on HTTP and gRPC."""
    # Triton's help says `<apis>,<key>=<value>`; the parser wants `<apis>:<key>=<value>`.
    restriction = f"{','.join(apis)}:{ADMIN_HEADER}={key}"
    return [f"--http-restricted-api={restriction}", f"--grpc-restricted-protocol={restriction}"]


def probe_headers(apis: Sequence[str], key: str) -> dict[str, str]:
    """What the readiness probe sends: the key when `health` is behind it, else nothing."""
    return {ADMIN_HEADER: key} if "health" in apis else {}


def locked_flag(arg: str) -> str | None:
    """The lock-down flag that `arg` would set, or None.

    Triton parses its flags with getopt_long, which takes any unambiguous prefix of a long
    option (`--model-control=explicit`, `--load-mod=*`) and a single dash too
    (`-model-control-mode`, getopt_long_only style), so a prefix of a fixed flag is refused
    as well: a real flag that happens to be one is ambiguous for Triton anyway.
    """
    name = arg.split("=", 1)[0]
    if not name.startswith("-") or name in ("-", "--"):
        return None
    bare = name.lstrip("-")
    for flag in FIXED_TRITON_FLAGS:
        if flag.lstrip("-").startswith(bare):
            return flag
    return None


def check_triton_args(args: Iterable[str]) -> None:
    """ValueError for a tritonserver flag (or an abbreviation of one) that would undo the
    lock-down."""
    for arg in args:
        flag = locked_flag(arg)
        if flag is not None:
            name = arg.split("=", 1)[0]
            what = name if name == flag else f"{name} (an abbreviation of {flag})"
            raise ValueError(
                f"tritonserver flag {what} is fixed by longdoc serve and cannot be overridden"
            )


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without the key's variables: tritonserver and its stubs get the key on the
    command line only (it is visible there through /proc, as Triton takes no other way)."""
    return {k: v for k, v in env.items() if k not in (ADMIN_KEY_ENV, ADMIN_KEY_FILE_ENV)}
