"""`longdoc serve`: run tritonserver on a model repository and supervise it.

Starts the server locked down (loopback, admin APIs behind a key), prints where to reach
it once every model is loaded, then waits: Ctrl-C or SIGTERM stops the server cleanly
(exit 0); a server that dies on its own is reported with its log tail (exit non-zero), so
a process manager restarts the pair instead of keeping a supervisor with no server.

Every flag also reads `LONGDOC_<FLAG>` (e.g. `--http-port` from `$LONGDOC_HTTP_PORT`) as
its default, the convention text-embeddings-inference follows: the container image is
configured by environment variables and runs this same command (`env_defaults`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping

from longdoc.contract import ADMIN_HEADER, ADMIN_KEY_ENV, ENV_PREFIX, GRPC_ADMIN_HEADER

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
(restarts keep it) and written to a 0600 file next to the log. Note that tritonserver
takes the key on its command line, visible to local users through ps.

Environment: every flag below also reads {ENV_PREFIX}<FLAG> as its default, shown as
[env: ...]; the command line wins. Repeatable flags read a shell-quoted list, e.g.
{ENV_PREFIX}TRITON_ARG="--log-verbose=1 --log-format=ISO8601"; on/off flags read
true/false.
"""

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def env_name(option: str) -> str:
    """The environment variable of a flag: --http-port -> LONGDOC_HTTP_PORT."""
    return ENV_PREFIX + option.lstrip("-").upper().replace("-", "_")


class EnvError:
    """A default from the environment that does not parse; reported when the command runs
    (a flag given on the command line replaces it, like any default)."""

    def __init__(self, name: str, value: str, reason: str) -> None:
        self.message = f"${name}={value!r}: {reason}"

    def __str__(self) -> str:
        return f"(invalid: {self.message})"


class Append(argparse.Action):
    """`append` whose first command-line value replaces the default (from the
    environment) instead of adding to it."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        items = getattr(namespace, self.dest, None)
        items = [] if items is None or items is self.default else list(items)
        items.append(values)
        setattr(namespace, self.dest, items)


def env_defaults(parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None) -> None:
    """Give every long flag of `parser` its default from `LONGDOC_<FLAG>` when that is set
    (and not empty), and name the variable in its --help."""
    environ = os.environ if environ is None else environ
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or isinstance(action, argparse._HelpAction):
            continue
        name = env_name(longs[0])
        action.help = f"{action.help} [env: {name}]" if action.help else f"[env: {name}]"
        raw = environ.get(name, "").strip()
        if raw:
            action.default = _parse_env(action, name, raw)


def _parse_env(action: argparse.Action, name: str, raw: str) -> object:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if raw.lower() in _TRUE:
            return action.const
        if raw.lower() in _FALSE:
            return not action.const
        return EnvError(name, raw, f"expected one of {', '.join(_TRUE + _FALSE)}")
    try:
        items = shlex.split(raw) if isinstance(action, Append) else [raw]
    except ValueError as exc:
        return EnvError(name, raw, str(exc))
    values = []
    for item in items:
        try:
            value = action.type(item) if callable(action.type) else item
        except (TypeError, ValueError) as exc:
            kind = getattr(action.type, "__name__", "value")
            return EnvError(name, raw, f"invalid {kind} value ({exc})")
        if action.choices is not None and value not in action.choices:
            return EnvError(name, raw, f"choose from {', '.join(map(str, action.choices))}")
        values.append(value)
    return values if isinstance(action, Append) else values[0]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `serve` to the `longdoc` command line (imports nothing heavy)."""
    from longdoc.server.lockdown import ADMIN_APIS, OPTIONAL_RESTRICTED_APIS
    from longdoc.server.options import ALLOCATORS, LOG_TO_STDOUT

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
        action=Append,
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
        "response_cache; 0: off (default: %(default)s)",
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
        help="seconds to wait for all models to load (default: %(default)s)",
    )
    p.add_argument(
        "--exit-timeout",
        type=int,
        default=20,
        metavar="S",
        help="seconds a stop waits for in-flight requests and open connections "
        "(tritonserver --exit-timeout-secs) (default: %(default)s)",
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
        "--allocator",
        choices=ALLOCATORS,
        default="auto",
        help="malloc for tritonserver and its stubs: jemalloc gives memory back after huge "
        "requests, glibc keeps its high-water mark; auto: jemalloc when installed "
        "(apt-get install libjemalloc2) (default: %(default)s)",
    )
    p.add_argument(
        "--triton-arg",
        action=Append,
        default=[],
        metavar="ARG",
        help="extra tritonserver flag, repeatable, e.g. --triton-arg=--log-verbose=1 "
        "(none of those the lock-down fixes)",
    )
    env_defaults(p)
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

    options = ServeOptions(
        model_repository=args.model_repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port or None,
        log_path=args.log,
        restrict=tuple(args.restrict_api),
        response_cache_mb=args.response_cache_mb,
        allocator=args.allocator,
        triton_args=tuple(args.triton_arg),
        ready_timeout=args.ready_timeout,
        exit_timeout=args.exit_timeout,
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

    from longdoc.server.process import ServerStartError, start_server, supervise

    bad = [v.message for v in vars(args).values() if isinstance(v, EnvError)]
    if bad:
        print("longdoc serve: " + "; ".join(bad), file=sys.stderr)
        return 2
    try:
        options, key = options_from_args(args)
    except (OSError, ValueError) as exc:
        print(f"longdoc serve: {exc}", file=sys.stderr)
        return 2

    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    handle = None
    restarts = 0
    try:
        while True:
            handle = start_server(options)
            _announce(handle)
            problem = supervise(handle)
            code = handle.returncode
            if handle.is_alive():  # a stub died: the server is up but cannot answer
                handle.stop()
            report = handle.failure_report()
            if restarts >= args.restart:
                print(f"longdoc serve: {problem}; {report}", file=sys.stderr, flush=True)
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
        print(f"longdoc serve: {exc}", file=sys.stderr, flush=True)
        return 1
    except ValueError as exc:  # e.g. --allocator jemalloc where there is none
        print(f"longdoc serve: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        key.discard()  # a generated key ends with the run (restarts kept it)


def _announce(handle) -> None:  # noqa: ANN001
    lines = [
        f"tritonserver ready (pid {handle.pid}), models from {handle.model_repository}",
        f"  HTTP     http://{handle.http_url}",
        f"  gRPC     {handle.grpc_url}",
    ]
    if handle.metrics_url:
        lines.append(f"  metrics  http://{handle.metrics_url}/metrics")
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
