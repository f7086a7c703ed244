"""`longdoc serve`: run tritonserver on a model repository and supervise it.

Starts the server locked down (loopback, admin APIs behind a key), prints where to reach
it once every model is loaded, then waits: Ctrl-C or SIGTERM stops the server cleanly
(exit 0); a server that dies on its own is reported with its log tail (exit non-zero), so
a process manager restarts the pair instead of keeping a supervisor with no server.
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Run NVIDIA Triton (tritonserver) on a model repository and supervise it.

All models in the repository are loaded at startup (model control mode "none"); the
command prints the HTTP, gRPC and metrics addresses once the server is ready, and keeps
running until Ctrl-C or SIGTERM, which stop the server cleanly. If tritonserver dies on
its own, the command prints the end of its log and exits non-zero.

Uses the tritonserver on PATH if there is one (NGC image), else the one shipped in the
nvidia-pytriton wheel (Python backend only: the "portable" repository profile).

Security: the server binds to --host (loopback by default), and the admin APIs
(model-repository, shared-memory, logging, trace) require the key in the HTTP header
"admin-key" or the gRPC metadata "triton-grpc-protocol-admin-key" (Triton adds the
prefix on gRPC). The key is read from --admin-key-file, else $LONGDOC_ADMIN_KEY; without
either, a random key is generated for this run and written to a 0600 file next to the
log. Note that tritonserver takes the key on its command line, visible to local users
through ps.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `serve` to the `longdoc` command line (imports nothing heavy)."""
    from longdoc.server.launcher import ADMIN_APIS, ALLOCATORS, OPTIONAL_RESTRICTED_APIS

    p = subparsers.add_parser(
        "serve",
        help="run tritonserver on a model repository and supervise it",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model-repository",
        default="./model_repository",
        metavar="DIR",
        help="Triton model repository to serve (default: %(default)s)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address HTTP, gRPC and metrics bind to; 0.0.0.0 exposes the server to the "
        "network (default: %(default)s)",
    )
    p.add_argument(
        "--http-port", type=int, default=8000, metavar="PORT", help="(default: %(default)s)"
    )
    p.add_argument(
        "--grpc-port", type=int, default=8001, metavar="PORT", help="(default: %(default)s)"
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=8002,
        metavar="PORT",
        help="Prometheus metrics port; 0 turns metrics off (default: %(default)s)",
    )
    p.add_argument(
        "--admin-key-file",
        metavar="FILE",
        help="file holding the key for the admin APIs (default: $LONGDOC_ADMIN_KEY, "
        "else a random key per run)",
    )
    p.add_argument(
        "--response-cache-mb",
        type=int,
        default=0,
        metavar="N",
        help="size of Triton's local response cache, for models whose config enables "
        "response_cache (default: off)",
    )
    p.add_argument(
        "--log",
        metavar="FILE",
        help="tritonserver log file (default: a new temporary directory)",
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds to wait for all models to load (default: %(default)s)",
    )
    p.add_argument(
        "--restart",
        type=int,
        default=0,
        metavar="N",
        help="restart tritonserver up to N times when it dies or a Python-backend stub "
        "dies (Triton does not restart stubs itself); 0: exit non-zero instead "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--restrict-api",
        action="append",
        default=[],
        metavar="API",
        help="put another API group behind the admin key too, repeatable: "
        f"{', '.join(OPTIONAL_RESTRICTED_APIS)} ({', '.join(ADMIN_APIS)} always are)",
    )
    p.add_argument(
        "--allocator",
        choices=ALLOCATORS,
        default="auto",
        help="malloc for tritonserver and its stubs: jemalloc gives memory back after huge "
        "requests, glibc keeps its high-water mark; auto: jemalloc when installed "
        "(apt-get install libjemalloc2) (default: %(default)s)",
    )
    p.add_argument(
        "--triton-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra tritonserver flag, repeatable, e.g. --triton-arg=--log-verbose=1",
    )
    p.set_defaults(func=run)


class _Stop(Exception):
    """Raised from the signal handler so a blocking wait() returns to the stop path."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signum)


def run(args: argparse.Namespace) -> int:
    """Start, report, supervise (restarting up to --restart times); the exit status."""
    import signal

    from longdoc.server.launcher import (
        ServerStartError,
        resolve_admin_key,
        restricted_apis,
        start_server,
        supervise,
    )

    extra_restricted = [a.strip() for v in args.restrict_api for a in v.split(",") if a.strip()]
    try:
        restricted_apis(extra_restricted)
        admin_key = resolve_admin_key(args.admin_key_file)
    except (OSError, ValueError) as exc:
        print(f"longdoc serve: {exc}", file=sys.stderr)
        return 2

    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    handle = None
    restarts = 0
    try:
        while True:
            handle = start_server(
                args.model_repository,
                host=args.host,
                http_port=args.http_port,
                grpc_port=args.grpc_port,
                metrics_port=args.metrics_port or None,
                log_path=args.log,
                admin_key=admin_key,
                response_cache_bytes=args.response_cache_mb * 1024 * 1024 or None,
                extra_args=args.triton_arg,
                ready_timeout=args.ready_timeout,
                allocator=args.allocator,
                extra_restricted=extra_restricted,
            )
            admin_key = handle.admin_key  # a restart keeps the key (and a generated one)
            _announce(handle, args)
            problem = supervise(handle)
            code = handle.returncode
            if handle.is_alive():  # a stub died: the server is up but cannot answer
                handle.stop()
            report = handle.failure_report()
            if restarts >= args.restart:
                print(f"longdoc serve: {problem}; {report}", file=sys.stderr, flush=True)
                if handle.admin_key_file is not None:
                    handle.admin_key_file.unlink(missing_ok=True)
                return code if code is not None and 0 < code < 126 else 1
            restarts += 1
            print(
                f"longdoc serve: {problem}; restarting ({restarts} of {args.restart})",
                file=sys.stderr,
                flush=True,
            )
    except _Stop as stop:
        if handle is not None:
            try:
                handle.stop()
            except _Stop:  # a second Ctrl-C: no more patience for a clean drain
                handle.process.kill()
                handle.stop()
        name = signal.Signals(stop.signum).name
        print(f"{name}: tritonserver stopped", file=sys.stderr, flush=True)
        return 0
    except ServerStartError as exc:
        print(f"longdoc serve: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _announce(handle, args: argparse.Namespace) -> None:
    from longdoc.server.launcher import ADMIN_HEADER, ADMIN_KEY_ENV, GRPC_ADMIN_HEADER

    if handle.admin_key_file is not None:
        key_note = f"key for this run in {handle.admin_key_file}"
    elif args.admin_key_file:
        key_note = f"key from {args.admin_key_file}"
    else:
        key_note = f"key from ${ADMIN_KEY_ENV}"
    lines = [
        f"tritonserver ready (pid {handle.pid}), models from {handle.model_repository}",
        f"  HTTP     http://{handle.http_url}",
        f"  gRPC     {handle.grpc_url}",
    ]
    if handle.metrics_url:
        lines.append(f"  metrics  http://{handle.metrics_url}/metrics")
    lines += [
        f"  log      {handle.log_path}",
        f"  malloc   {handle.allocator}"
        + (
            ""
            if handle.allocator == "jemalloc"
            else " (no jemalloc: huge requests leave "
            "a high-water mark; apt-get install libjemalloc2)"
        ),
        f"  admin    {','.join(handle.restricted)} need the key as HTTP header "
        f"'{ADMIN_HEADER}' or gRPC metadata '{GRPC_ADMIN_HEADER}'; {key_note}",
        "Ctrl-C or SIGTERM stops the server.",
    ]
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m longdoc.server.cli serve ...`: the subcommand without the rest of `longdoc`."""
    parser = argparse.ArgumentParser(prog="longdoc")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
