"""What keeps a served tritonserver to itself: it dies with its supervisor, its Python
backend regions live on a private /dev/shm, and the admin key is wiped from its command
line once read (RELIABILITY.md "Hostile clients and neighbours")."""

from __future__ import annotations

import ctypes
import os
import signal


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


_CLONE_NEWNS, _CLONE_NEWUSER = 0x00020000, 0x10000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REC, _MS_PRIVATE = 2, 4, 8, 0x4000, 1 << 18


def _enter_private_shm() -> None:  # pragma: no cover - runs in the child before exec
    """Give tritonserver (and the stubs it forks) a /dev/shm of their own, mode 0700.

    The Python backend creates its regions 0644 whatever the umask (it sets the mode
    itself), and they hold every request's tensors: on the host's /dev/shm any local user
    can read other people's documents. A new mount namespace with a fresh tmpfs on /dev/shm
    hides them: other users cannot reach it (only through /proc/<pid>/root, which needs
    ptrace rights over the server), and it disappears, regions and all, with the last
    process of the server. Unprivileged users get the mount namespace through a user
    namespace that maps only their own uid and gid (nothing else changes for the server).
    Best effort: where namespaces are not allowed (e.g. a container under the default
    seccomp profile, where /dev/shm is the pod's own anyway) the server runs on the
    host's /dev/shm, and `start_server` reports which it got.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        uid, gid = os.getuid(), os.getgid()
        if uid == 0:
            if libc.unshare(_CLONE_NEWNS) != 0:
                return
        else:
            if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS) != 0:
                return
            maps = {"setgroups": "deny", "uid_map": f"{uid} {uid} 1", "gid_map": f"{gid} {gid} 1"}
            for name, text in maps.items():  # setgroups first: gid_map needs it
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        if libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
            return
        libc.mount(
            b"tmpfs", b"/dev/shm", b"tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, b"mode=0700"
        )
    except OSError:
        return


def child_setup(private_shm: bool):
    """The function the child runs before exec: parent-death signal, private /dev/shm."""

    def setup() -> None:  # pragma: no cover - runs in the child before exec
        _die_with_parent()
        if private_shm:
            _enter_private_shm()

    return setup


def has_private_shm(pid: int) -> bool:
    """Whether process `pid` sees another /dev/shm than this process (a private tmpfs)."""
    try:
        return os.stat(f"/proc/{pid}/root/dev/shm").st_dev != os.stat("/dev/shm").st_dev
    except OSError:
        return False


def hide_argument(pid: int, secret: str) -> bool:
    """Overwrite `secret` with `*` in the command line of process `pid` (ours, same user).

    Triton 2.51 takes the admin key only on its command line (`--http-restricted-api`,
    no file or environment variable), and /proc/<pid>/cmdline is readable by every local
    user. Once tritonserver has parsed its flags (into strings of its own) the argv area is
    never read again, so its parent, which may write the child's memory through
    /proc/<pid>/mem (same uid, ptrace rules), wipes the key there: ps and /proc show
    `admin-key=****`. True when the command line no longer holds the key.
    """
    needle = secret.encode()
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
        with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            args = mem.read(end - start)
            if needle in args:
                mem.seek(start)
                mem.write(args.replace(needle, b"*" * len(needle)))
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return needle not in f.read()
    except (OSError, ValueError, IndexError):
        return False


def flags_parsed(pid: int) -> bool:
    """Whether tritonserver is past parsing its flags: it has started loading a backend."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "libtriton_" in f.read()
    except OSError:
        return False
