"""The tritonserver command line and environment for a `ServeOptions`.

Ports and addresses, the lock-down flags (`lockdown.restriction_flags`), the response
cache, no pooled gRPC request objects, and the allocator: jemalloc through LD_PRELOAD.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from longdoc.contract import ENV_PREFIX
from longdoc.server.lockdown import check_triton_args, restricted_apis, restriction_flags
from longdoc.server.options import ALLOCATORS, ServeOptions

# glibc's malloc keeps what a huge request made it allocate (a chunker stub kept ~45 MB
# after a 50 MB document, and ~330 MB of tokenizer heap after a million tokens before it
# learnt to malloc_trim; RELIABILITY.md, "Memory around hostile input"). jemalloc with a
# background thread gives freed pages back to the kernel within about a second. Triton's
# release notes recommend it (their containers ship it: LD_PRELOAD). The stubs inherit it.
JEMALLOC_ENV = ENV_PREFIX + "JEMALLOC"  # path to libjemalloc.so, if not in a standard place
JEMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so",
)
JEMALLOC_CONF = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0"
# --grpc-infer-allocation-pool-size (Triton's default: 8). Triton keeps gRPC request
# objects for reuse, each with the capacity of the largest message it held: 50 MB
# documents left ~50 MB per pooled object for good. Per-request objects cost microseconds.
GRPC_REQUEST_POOL = 0


def find_jemalloc() -> str | None:
    """libjemalloc's path ($LONGDOC_JEMALLOC, then the usual Debian/RHEL places), or None."""
    for candidate in (os.environ.get(JEMALLOC_ENV), *JEMALLOC_PATHS):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def apply_allocator(env: dict[str, str], allocator: str) -> str:
    """Set `env` up for `allocator` ("auto": jemalloc when installed, else glibc) and return
    the one in use. ValueError for "jemalloc" when it is not installed."""
    if allocator not in ALLOCATORS:
        raise ValueError(f"allocator must be one of {ALLOCATORS} (got {allocator!r})")
    library = find_jemalloc() if allocator != "glibc" else None
    if library is None:
        if allocator == "jemalloc":
            raise ValueError(
                "jemalloc requested but not found: install it (Debian/Ubuntu: apt-get install "
                f"libjemalloc2) or point ${JEMALLOC_ENV} at libjemalloc.so"
            )
        return "glibc"
    preload = env.get("LD_PRELOAD", "")
    if library not in preload.split(":"):
        env["LD_PRELOAD"] = f"{library}:{preload}" if preload else library
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    return "jemalloc"


def build_command(
    binary: Path,
    options: ServeOptions,
    admin_key: str,
    *,
    install_flags: Sequence[str] = (),
    help_text: str = "",
    shm_prefix: str | None = None,
) -> list[str]:
    """The tritonserver argv for `options` (`help_text`: the binary's --help, to ask which
    flags this build knows). `shm_prefix`: the name prefix of the Python backend's
    /dev/shm regions, unique per server so that the supervisor can find and remove the
    regions of a server that died (Triton names them `triton_python_backend_shm_region_*`
    by default, the same for every server on the host)."""
    check_triton_args(options.triton_args)
    host = options.host
    cmd = [
        str(binary),
        f"--model-repository={Path(options.model_repository).resolve()}",
        "--model-control-mode=none",
        f"--http-address={host}",
        f"--http-port={options.http_port}",
        f"--grpc-address={host}",
        f"--grpc-port={options.grpc_port}",
        *restriction_flags(restricted_apis(options.restrict), admin_key),
        f"--exit-timeout-secs={int(options.exit_timeout)}",
    ]
    if options.metrics_port is None:
        cmd.append("--allow-metrics=false")
    else:
        cmd.append(f"--metrics-port={options.metrics_port}")
        if "--metrics-address" in help_text:
            cmd.append(f"--metrics-address={host}")
    if options.response_cache_mb:
        cmd.append(f"--cache-config=local,size={int(options.response_cache_mb) * 1024 * 1024}")
    if "--grpc-infer-allocation-pool-size" in help_text and not any(
        a.startswith("--grpc-infer-allocation-pool-size") for a in options.triton_args
    ):
        cmd.append(f"--grpc-infer-allocation-pool-size={GRPC_REQUEST_POOL}")
    if shm_prefix and not any("shm-region-prefix-name" in a for a in options.triton_args):
        cmd.append(f"--backend-config=python,shm-region-prefix-name={shm_prefix}")
    cmd += [*install_flags, *options.triton_args]
    return cmd
