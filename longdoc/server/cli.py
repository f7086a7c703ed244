"""`longdoc serve`: run tritonserver on a model repository and supervise it.

Starts the server locked down (loopback, admin APIs behind a key), prints where to reach
it once every model is loaded, then waits: Ctrl-C or SIGTERM stops the server cleanly
(exit 0); a server that dies on its own is reported with its log tail (exit non-zero), so
a process manager restarts the pair instead of keeping a supervisor with no server.

Every flag also reads `LONGDOC_<FLAG>` (e.g. `--http-port` from `$LONGDOC_HTTP_PORT`), the
convention text-embeddings-inference follows: the container image is configured by
environment variables and runs this same command. That, the defaults in --help and the
error convention are the ones of every subcommand (`longdoc.cli_options`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from longdoc.cli_options import (
    Parser,
    UsageError,
    apply_convention,
    config_from_args,
    deprecated_alias,
)
from longdoc.cli_options import run as run_command
from longdoc.contract import (
    ADMIN_HEADER,
    ADMIN_KEY_ENV,
    ENCODER,
    EXPORT_REPORT,
    FP32_FALLBACK_FILE,
    GRPC_ADMIN_HEADER,
)
from longdoc.machine import serving_int8_kernels

if TYPE_CHECKING:
    from longdoc.server.process import ServerHandle

DESCRIPTION = f"""\
Run NVIDIA Triton (tritonserver) on a model repository and supervise it.

All models in the repository are loaded at startup (model control mode "none"); the
command prints the HTTP, gRPC and metrics addresses once the server is ready, and keeps
running until Ctrl-C or SIGTERM, which stop the server cleanly. If tritonserver dies on
its own, the command prints the end of its log and exits non-zero (or restarts it, see
--restart).

Uses the tritonserver on PATH if there is one (NGC image), else the one shipped in the
nvidia-pytriton wheel (Python backend only: the "portable" repository profile).

Security: the server binds to --host (loopback by default), and the admin APIs
(model-repository, shared-memory, logging, trace) require the key in the HTTP header
"{ADMIN_HEADER}" or the gRPC metadata "{GRPC_ADMIN_HEADER}" (Triton adds the
prefix on gRPC). The key is read from --admin-key-file or ${ADMIN_KEY_ENV} (not both): at
least 16 visible ASCII characters. Without either, a random key is generated for the run
(restarts keep it) and written to a new 0600 file next to the log. Triton takes the
key on its command line only; once tritonserver has read it, it is wiped there, so ps
and /proc show admin-key=****. The Python backend's shared memory (the documents) is on
a private /dev/shm of the server's own, where the system allows it (--host-shm: not).

Environment: the image sets the flags below as variables, e.g. LONGDOC_HOST=0.0.0.0 or
LONGDOC_TRITON_ARG="--log-verbose=1 --log-format=ISO8601" (see the end of this help).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `serve` to the `longdoc` command line (imports nothing heavy)."""
    from longdoc.server.lockdown import ADMIN_APIS, OPTIONAL_RESTRICTED_APIS
    from longdoc.server.options import ALLOCATORS, LOG_TO_STDOUT

    p = subparsers.add_parser(
        "serve",
        help="run tritonserver on a model repository and supervise it",
        description=DESCRIPTION,
    )
    p.add_argument(
        "--repository",
        default="./model_repository",
        metavar="DIR",
        help="Triton model repository to serve",
    )
    deprecated_alias(p, "--model-repository", "--repository")  # $LONGDOC_MODEL_REPOSITORY too
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address HTTP, gRPC and metrics bind to; 0.0.0.0 exposes the server to the network",
    )
    p.add_argument("--http-port", type=int, default=8000, metavar="PORT", help="HTTP port")
    p.add_argument("--grpc-port", type=int, default=8001, metavar="PORT", help="gRPC port")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=8002,
        metavar="PORT",
        help="Prometheus metrics port; 0 turns metrics off",
    )
    p.add_argument(
        "--admin-key-file",
        metavar="FILE",
        help=f"file holding the key for the admin APIs (default: ${ADMIN_KEY_ENV}, "
        "else a random key per run)",
    )
    p.add_argument(
        "--require-admin-key",
        action="store_true",
        help="refuse to start without a key from --admin-key-file or "
        f"${ADMIN_KEY_ENV} instead of generating one (the container image sets it)",
    )
    p.add_argument(
        "--restrict-api",
        action="append",
        default=[],
        metavar="API",
        help="put another API group behind the admin key too, repeatable or "
        f"comma-separated: {', '.join(OPTIONAL_RESTRICTED_APIS)} ({', '.join(ADMIN_APIS)} "
        "always are; with health, probes must send the key)",
    )
    p.add_argument(
        "--response-cache-mb",
        type=int,
        default=0,
        metavar="N",
        help="size of Triton's local response cache, for models whose config enables "
        "response_cache; 0: off",
    )
    p.add_argument(
        "--log",
        metavar="FILE",
        help=f"tritonserver log file; '{LOG_TO_STDOUT}': this command's stdout, as "
        "containers want it (default: a new temporary directory)",
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds to wait for all models to load",
    )
    p.add_argument(
        "--exit-timeout",
        type=int,
        default=20,
        metavar="S",
        help="seconds a stop waits for in-flight requests and open connections "
        "(tritonserver --exit-timeout-secs)",
    )
    p.add_argument(
        "--restart",
        type=int,
        default=0,
        metavar="N",
        help="restart tritonserver up to N times when it dies or a Python-backend stub "
        "dies (Triton does not restart stubs itself); 0: exit non-zero instead "
        "",
    )
    p.add_argument(
        "--allocator",
        choices=ALLOCATORS,
        default="auto",
        help="malloc for tritonserver and its stubs: jemalloc gives memory back after huge "
        "requests, glibc keeps its high-water mark; auto: jemalloc when installed "
        "(apt-get install libjemalloc2)",
    )
    p.add_argument(
        "--host-shm",
        action="store_true",
        help="run tritonserver on the host's /dev/shm instead of a private one (only for "
        "clients of Triton's system shared-memory API: the Python backend's regions, which "
        "hold the documents, are then mode 0644, readable by every local user)",
    )
    p.add_argument(
        "--triton-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra tritonserver flag, repeatable, e.g. --triton-arg=--log-verbose=1 "
        "(none of those the lock-down fixes)",
    )
    p.set_defaults(func=run)


class _Stop(Exception):
    """Raised from the signal handler so a blocking wait() returns to the stop path."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signum)


def options_from_args(args: argparse.Namespace):  # -> tuple[ServeOptions, AdminKey]
    """The run's options and its one admin key (resolved or generated, kept by restarts).
    ValueError (or OSError) before anything is written when no server could start."""
    import dataclasses
    import tempfile
    from pathlib import Path

    from longdoc.server.lockdown import admin_key_for_run, generate_admin_key
    from longdoc.server.options import LOG_TO_STDOUT, ServeOptions

    options = config_from_args(
        ServeOptions,
        args,
        model_repository=args.repository,
        metrics_port=args.metrics_port or None,
        log_path=args.log,
        restrict=tuple(args.restrict_api),
        triton_args=tuple(args.triton_arg),
    )
    options.check()
    key = admin_key_for_run(args.admin_key_file, required=args.require_admin_key)
    if args.log == LOG_TO_STDOUT:
        log_file = None
    else:  # one log file for the whole run, restarts included: the key sits next to it
        log_file = Path(args.log).resolve() if args.log else None
        if log_file is None:
            log_file = Path(tempfile.mkdtemp(prefix="longdoc-serve-")) / "tritonserver.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
    key = key or generate_admin_key(log_file)
    return dataclasses.replace(options, log_path=log_file or LOG_TO_STDOUT, admin_key=key), key


def run(args: argparse.Namespace) -> int:
    """Start, report, supervise (restarting up to --restart times); the exit status."""
    import signal

    from longdoc.server.process import ServerStartError, start_server
    from longdoc.server.stubs import stop_lost_server, supervise

    try:
        options, key = options_from_args(args)
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None

    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    handle = None
    restarts = 0
    problem = None
    if options.host not in ("127.0.0.1", "::1", "localhost"):
        print(
            f"longdoc serve: note: bound to {options.host}: Triton 2.51 inflates compressed "
            "request bodies (HTTP Content-Encoding gzip/deflate, gRPC compression) with no "
            "size limit; keep a proxy in front that refuses them (deploy/nginx/longdoc.conf, "
            "RELIABILITY.md 'Hostile clients and neighbours')",
            file=sys.stderr,
            flush=True,
        )
    try:
        while True:
            note = f"restart {restarts} of {args.restart} after: {problem}" if restarts else None
            handle = start_server(options, restart_note=note)
            _announce(handle)
            problem = supervise(handle)
            code = handle.returncode
            if handle.is_alive():  # a stub is lost: the server is up but cannot answer
                stop_lost_server(handle)
            else:  # it exited: its stubs and /dev/shm regions must not outlive it
                handle.stop()
            report = handle.failure_report()
            if restarts >= args.restart:
                print(f"longdoc serve: error: {problem}; {report}", file=sys.stderr, flush=True)
                return code if code is not None and 0 < code < 126 else 1
            restarts += 1
            print(
                f"longdoc serve: {problem}; restarting ({restarts} of {args.restart}); {report}",
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
        print(f"longdoc serve: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except ValueError as exc:  # e.g. --allocator jemalloc where there is none
        raise UsageError(str(exc)) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        key.discard()  # a generated key ends with the run (restarts kept it)


def encoder_note(repository: Path) -> str | None:
    """What the encoder of an INT8 repository runs on this CPU (None for other precisions):
    INT8 only pays with VNNI (BENCHMARKS.md "INT8 on CPUs with and without VNNI")."""
    try:
        report = json.loads((repository / EXPORT_REPORT).read_text())
    except (OSError, ValueError):
        return None
    if report.get("precision") != "int8":
        return None
    kernels = serving_int8_kernels()
    cpu = f"this CPU's integer kernels: {kernels}"
    if kernels == "vnni":
        return f"INT8 ({cpu})"
    if (repository / ENCODER / "1" / FP32_FALLBACK_FILE).is_file():
        return (
            f"FP32 graph of this INT8 export ({cpu}, no VNNI: INT8 would be no faster and "
            "less accurate here)"
        )
    return (
        f"INT8 ({cpu}, no VNNI): measured no faster than FP32 and less accurate on such "
        "CPUs; serve an FP32 export on this machine"
    )


def _announce(handle: ServerHandle) -> None:
    lines = [
        f"tritonserver ready (pid {handle.pid}), models from {handle.model_repository}",
        f"  HTTP     http://{handle.http_url}",
        f"  gRPC     {handle.grpc_url}",
    ]
    if handle.metrics_url:
        lines.append(f"  metrics  http://{handle.metrics_url}/metrics")
    encoder = encoder_note(Path(handle.model_repository))
    if encoder:
        lines.append(f"  encoder  {encoder}")
    lines += [
        f"  log      {handle.log_path or 'stdout'}",
        f"  malloc   {handle.allocator}"
        + (
            ""
            if handle.allocator == "jemalloc"
            else " (no jemalloc: huge requests leave "
            "a high-water mark; apt-get install libjemalloc2)"
        ),
        f"  admin    {','.join(handle.restricted)} need the key as HTTP header "
        f"'{ADMIN_HEADER}' or gRPC metadata '{GRPC_ADMIN_HEADER}'; {handle.key.source}",
        f"  key      {handle.key_protection}",
        "Ctrl-C or SIGTERM stops the server.",
    ]
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m longdoc.server.cli serve ...`: the subcommand without the rest of `longdoc`
    (the same convention: `longdoc.cli_options`)."""
    parser = Parser(prog="longdoc")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return run_command(apply_convention(parser), argv)


if __name__ == "__main__":
    sys.exit(main())
