"""`ServeOptions`: everything that says how to run one tritonserver, in one value.

`longdoc serve` builds it from its flags (each also read from `LONGDOC_<FLAG>`), library
callers and tests build it directly; `start_server(options)` runs it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from longdoc.server.lockdown import AdminKey, check_triton_args, restricted_apis

ALLOCATORS = ("auto", "jemalloc", "glibc")
LOG_TO_STDOUT = "-"  # log_path value: tritonserver's output goes to this process's stdout


@dataclass(frozen=True)
class ServeOptions:
    """How to run tritonserver on a model repository.

    `metrics_port=None` turns metrics off. `log_path=None` logs to a file in a new temporary
    directory, `"-"` to this process's stdout (containers). `admin_key=None` generates a
    key for this server, written to a 0600 file next to the log and deleted when it stops;
    a caller that restarts servers resolves the key once (`lockdown.admin_key_for_run`)
    and passes the `AdminKey`. `restrict`: more API groups behind the
    key (e.g. "statistics", "health"). `response_cache_mb` sizes the local response cache
    used by models whose config enables `response_cache`. `allocator`: "auto" runs
    tritonserver and its stubs on jemalloc when installed, else on glibc's malloc.
    `exit_timeout` bounds how long a stop waits for in-flight requests and open
    connections (`--exit-timeout-secs`). `host_shm`: run tritonserver on the host's
    /dev/shm instead of a private one (`process._enter_private_shm`): needed only by
    clients of Triton's system shared-memory extension. `triton_args`: more tritonserver
    flags (none of the lock-down's). `tritonserver`: the binary (default:
    `binary.find_tritonserver()`).
    """

    model_repository: str | os.PathLike[str]
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int | None = 8002
    log_path: str | os.PathLike[str] | None = None
    admin_key: str | AdminKey | None = field(default=None, repr=False)
    restrict: Sequence[str] = ()
    response_cache_mb: int = 0
    allocator: str = "auto"
    triton_args: Sequence[str] = ()
    ready_timeout: float = 120.0
    exit_timeout: int = 20
    host_shm: bool = False
    tritonserver: str | os.PathLike[str] | None = None

    def check(self) -> None:
        """ValueError for what no server could start with (before anything runs)."""
        restricted_apis(self.restrict)
        check_triton_args(self.triton_args)
        if self.allocator not in ALLOCATORS:
            choices = ", ".join(ALLOCATORS)
            raise ValueError(f"allocator must be one of {choices} (got {self.allocator!r})")
        for name in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(self, name)
            if port is not None and not 0 < port < 65536:
                raise ValueError(f"{name.replace('_', ' ')} {port} is not a TCP port")
        if self.response_cache_mb < 0 or self.exit_timeout < 0 or self.ready_timeout <= 0:
            raise ValueError("response cache size and timeouts must not be negative")

    @property
    def logs_to_stdout(self) -> bool:
        return self.log_path is not None and str(self.log_path) == LOG_TO_STDOUT

    def log_file(self) -> Path | None:
        """The log file this server writes (a new temporary one if none was named); None
        when it logs to stdout."""
        if self.logs_to_stdout:
            return None
        if self.log_path is None:
            import tempfile

            return Path(tempfile.mkdtemp(prefix="longdoc-serve-")) / "tritonserver.log"
        path = Path(self.log_path).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
