"""The server launcher's public names in one import (kept so existing imports work).

The code lives by concern: `binary` (which tritonserver, and what it needs to run here),
`lockdown` (the admin key and what it guards), `options` (`ServeOptions`), `command` (the
tritonserver argv, the allocator), `probe` (ports, readiness), `process` (start, supervise,
stop). New code may import from those modules directly.
"""

from __future__ import annotations

from longdoc.contract import ADMIN_HEADER, ADMIN_KEY_ENV, GRPC_ADMIN_HEADER
from longdoc.server.binary import CACHE_DIR_ENV, find_tritonserver
from longdoc.server.command import (
    GRPC_REQUEST_POOL,
    JEMALLOC_CONF,
    JEMALLOC_ENV,
    JEMALLOC_PATHS,
    apply_allocator,
    build_command,
    find_jemalloc,
)
from longdoc.server.lockdown import (
    ADMIN_APIS,
    OPTIONAL_RESTRICTED_APIS,
    AdminKey,
    check_admin_key,
    generate_admin_key,
    resolve_admin_key,
    restricted_apis,
)
from longdoc.server.options import ALLOCATORS, ServeOptions
from longdoc.server.probe import free_port, free_ports, is_ready, wait_ready
from longdoc.server.process import (
    LOG_TAIL_LINES,
    ServerHandle,
    ServerStartError,
    backend_stubs,
    dead_stubs,
    failure_report,
    log_tail,
    start_server,
    supervise,
)

__all__ = [
    "ADMIN_APIS",
    "ADMIN_HEADER",
    "ADMIN_KEY_ENV",
    "ALLOCATORS",
    "CACHE_DIR_ENV",
    "GRPC_ADMIN_HEADER",
    "GRPC_REQUEST_POOL",
    "JEMALLOC_CONF",
    "JEMALLOC_ENV",
    "JEMALLOC_PATHS",
    "LOG_TAIL_LINES",
    "OPTIONAL_RESTRICTED_APIS",
    "AdminKey",
    "ServeOptions",
    "ServerHandle",
    "ServerStartError",
    "apply_allocator",
    "backend_stubs",
    "build_command",
    "check_admin_key",
    "dead_stubs",
    "failure_report",
    "find_jemalloc",
    "find_tritonserver",
    "free_port",
    "free_ports",
    "generate_admin_key",
    "is_ready",
    "log_tail",
    "resolve_admin_key",
    "restricted_apis",
    "start_server",
    "supervise",
    "wait_ready",
]
