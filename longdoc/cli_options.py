"""One command-line convention for every `longdoc` subcommand, declared once.

The rules (README "Command line" has the user's view):

* **Shared flag groups**: the server connection (`add_server_args`: `--url --protocol --model
  --header --timeout --retries`) and the chunking (`add_chunking_args`) are declared here, so
  `classify`, `bench` and `evaluate` (and `export` and `train`) cannot drift apart. The
  served repository is `--repository` everywhere; an old spelling stays as a hidden
  `deprecated_alias`. `--output DIR` is always a folder the command creates and fills with
  files of fixed names (`add_output_arg`); a command with one stream of results writes it
  on stdout.
* **Environment**: every flag also reads `LONGDOC_<FLAG>` (`--max-chunks` from
  `$LONGDOC_MAX_CHUNKS`); the command line wins. On/off flags read 1/true/yes/on or
  0/false/no/off; flags that take several values (`--header`, `--seq-buckets`) read a
  shell-quoted list, the format `LONGDOC_TRITON_ARG` has always had (a header value holds
  spaces and commas, a tritonserver flag commas: only quoting separates both safely). A
  value that does not parse is reported only when the command line does not replace it.
* **Errors and exit status**: `longdoc <command>: error: <message>` on stderr; exit 2 for a
  usage error or unusable input (`UsageError`, and argparse's own errors), 1 when the
  command ran and some of its work failed (`CommandFailed`, or a command's own count of
  refused documents), 0 otherwise.
* `--help` of every subcommand shows each flag's default (`HelpFormatter`).
* A config object is built from the parsed flags in one place (`config_from_args`).

`longdoc.cli` applies the convention to every registered subcommand (`Parser`,
`apply_convention`, `run`), without each subcommand having to remember it.

Why argparse and this module rather than jsonargparse (which has dataclass arguments and
environment variables built in, and installs): it names a subcommand's variables
`LONGDOC_<COMMAND>_<FLAG>`, which would break the `LONGDOC_HTTP_PORT`-style names the
container image, the Kubernetes manifests and the KServe runtime already set; it takes lists
as JSON/YAML, not the shell-quoted form those use; and it adds PyYAML to the `longdoc[client]`
install that must stay light. Standard library and `longdoc.contract` only (the server group
borrows the client's address and header rules, which are standard library too).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import shlex
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from longdoc.contract import CHUNKING_DEFAULTS, ENSEMBLE, ENV_PREFIX, OVERFLOW_POLICIES, STRATEGIES

EXIT_FAILED = 1  # the command ran and some of its work failed
EXIT_USAGE = 2  # a usage error or unusable input: nothing (useful) was done

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")

T = TypeVar("T")


class UsageError(Exception):
    """Unusable input found while the command runs (a missing file, a bad flag combination):
    `run` prints `longdoc <command>: error: <message>` and exits 2."""


class CommandFailed(Exception):
    """The command ran and its work failed (e.g. parity past tolerance): `run` prints
    `longdoc <command>: error: <message>` and exits 1."""


def env_name(option: str) -> str:
    """The environment variable of a flag: --http-port -> LONGDOC_HTTP_PORT."""
    return ENV_PREFIX + option.lstrip("-").upper().replace("-", "_")


class EnvError:
    """A default from the environment that does not parse. It stays a default, so a flag
    given on the command line replaces it; `Parser` reports it when none does."""

    def __init__(self, name: str, value: str, reason: str) -> None:
        self.message = f"${name}={value!r}: {reason}"

    def __str__(self) -> str:
        return f"(invalid: {self.message})"


class Append(argparse._AppendAction):
    """`append` whose first command-line value replaces the default (declared or from the
    environment) instead of adding to it: the command line wins, lists included.
    `Parser` makes it what `action="append"` means."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        items = getattr(namespace, self.dest, None)
        items = [] if items is None or items is self.default else list(items)
        items.append(values)
        setattr(namespace, self.dest, items)


class DeprecatedAlias(argparse._StoreAction):
    """An old spelling of a flag (hidden from --help): stores into the new flag's value and
    says on stderr which spelling to use instead."""

    def __init__(self, *args: Any, replacement: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.replacement = replacement

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            f"{parser.prog}: warning: {option_string} is deprecated, use {self.replacement}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def _shown(value: object) -> str:
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


class HelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default, or says that it is required; a help text
    that explains its default in words ("default: per profile") keeps its words.
    A description or epilog written in lines keeps them; one paragraph is wrapped."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip():  # written with its own line breaks: keep them
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _format_action(self, action: argparse.Action) -> str:
        # argparse prints no help column for a flag declared without help: give it one
        # that holds the default alone.
        if action.option_strings and not action.help:
            action = copy.copy(action)
            action.help, action.noted = self._with_default(action), True
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        if getattr(action, "noted", False):
            return action.help
        return self._with_default(action)

    def _with_default(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS:
            return text
        source = getattr(action, "env_source", None)
        if source and "%(default)" in text:  # a default the environment gave for this run
            return f"{text} (from ${source})"
        if source:
            shown = _shown(action.default).replace("%", "%%")
            return f"{text} (default: {shown}, from ${source})".strip()
        if action.required:
            return f"{text} (required)".strip()
        if "default" in text.lower():
            return text
        return f"{text} (default: {_shown(action.default).replace('%', '%%')})".strip()


class Parser(argparse.ArgumentParser):
    """`ArgumentParser` that reads every flag's `LONGDOC_<FLAG>` when it parses, and whose
    `action="append"` lets the command line replace a list rather than extend it.
    Subparsers made with `add_parser` are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", "append", Append)

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """argparse's parse, with each flag's environment value as its default for this
        parse only (the parser is left as declared); a bad one is an error unless the
        command line replaced it."""
        applied = self._apply_environment(os.environ)
        groups = [g for g in self._mutually_exclusive_groups if g.required]
        for group in groups:
            group.required = not any(a in applied for a in group._group_actions)
        try:
            namespace, extras = super().parse_known_args(args, namespace)
        finally:
            for action, (default, required, _, _) in applied.items():
                action.default, action.required, action.env_source = default, required, None
            for group in groups:
                group.required = True
        self._settle_exclusive_groups(namespace, applied)
        bad = [v.message for a in applied if isinstance(v := getattr(namespace, a.dest), EnvError)]
        if bad:
            self.error("; ".join(bad))
        return namespace, extras

    def _env_names(self, action: argparse.Action) -> list[str]:
        """The variables of a flag: its own, then those of its deprecated aliases."""
        names = []
        for other in self._actions:
            longs = [o for o in other.option_strings if o.startswith("--")]
            if other.dest == action.dest and longs:
                names.append(env_name(longs[0]))
        return names

    def _apply_environment(self, environ: Mapping[str, str]) -> dict:
        """Set each flag's default from its variable (when set and not empty). Per action:
        (declared default, declared required, value from the environment, variable)."""
        applied = {}
        for action in self._actions:
            if not action.option_strings or action.default is argparse.SUPPRESS:
                continue  # --help, --version, hidden aliases (their variables count below)
            for name in self._env_names(action):
                raw = environ.get(name, "").strip()
                if raw:
                    value = self._env_value(action, name, raw)
                    applied[action] = (action.default, action.required, value, name)
                    action.default, action.required, action.env_source = value, False, name
                    break
        return applied

    def _env_value(self, action: argparse.Action, name: str, raw: str) -> object:
        if action.nargs == 0:  # on/off: store_true/false/const, BooleanOptionalAction
            on = True if action.const is None else action.const
            if raw.lower() in TRUE_WORDS:
                return on
            if raw.lower() in FALSE_WORDS:
                return (not on) if isinstance(on, bool) else action.default
            return EnvError(name, raw, f"expected one of {', '.join(TRUE_WORDS + FALSE_WORDS)}")
        many = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*")
        try:
            items = shlex.split(raw) if many else [raw]
        except ValueError as exc:
            return EnvError(name, raw, str(exc))
        convert = self._registry_get("type", action.type, action.type)
        values = []
        for item in items:
            try:
                value = convert(item) if callable(convert) else item
            except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
                kind = getattr(action.type, "__name__", "value")
                return EnvError(name, raw, f"invalid {kind} value ({exc})")
            if action.choices is not None and value not in action.choices:
                return EnvError(name, raw, f"choose from {', '.join(map(str, action.choices))}")
            values.append(value)
        return values if many else values[0]

    def _settle_exclusive_groups(self, namespace: argparse.Namespace, applied: dict) -> None:
        """A mutually exclusive flag given on the command line silences the environment's
        values for the others; two from the environment alone are an error."""
        for group in self._mutually_exclusive_groups:
            members = group._group_actions
            from_env = [
                a for a in members if a in applied and getattr(namespace, a.dest) is applied[a][2]
            ]
            given = [
                a
                for a in members
                if a not in from_env and getattr(namespace, a.dest, None) is not a.default
            ]
            if given:
                for action in from_env:
                    setattr(namespace, action.dest, action.default)
            elif len(from_env) > 1:
                names = " and ".join(f"${applied[a][3]}" for a in from_env)
                self.error(f"{names}: set one of them, not both")


# --------------------------------------------------------------------------- the whole tree


def iter_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """`parser` and every subparser below it, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from iter_parsers(sub)


def _convention_epilog(parser: argparse.ArgumentParser) -> str:
    flags = [
        o for a in parser._actions if a.default is not argparse.SUPPRESS for o in a.option_strings
    ]
    example = next((o for o in flags if o.startswith("--")), "--max-chunks")
    text = (
        f"Every flag also reads {ENV_PREFIX}<FLAG> ({example} from ${env_name(example)}); "
        "the command line wins. On/off flags read 1/true/yes/on or 0/false/no/off; flags "
        "taking several values read a shell-quoted list. Exit status: 0 done; 1 the "
        "command ran and some of its work failed; 2 a usage error or unusable input."
    )
    return "environment and exit status:\n" + textwrap.fill(
        text, 76, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False
    )


def apply_convention(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """After every subcommand registered itself: each parser of the tree shows defaults
    in --help and explains the environment and the exit status in its epilog."""
    for sub in iter_parsers(parser):
        sub.formatter_class = HelpFormatter
        epilog = _convention_epilog(sub)
        sub.epilog = f"{sub.epilog.rstrip()}\n\n{epilog}" if sub.epilog else epilog
    return parser


def _command_prog(parser: argparse.ArgumentParser, func: Callable) -> str:
    """`longdoc <command>` (or deeper) of the subparser that set `func`."""
    for sub in reversed(list(iter_parsers(parser))):
        if sub._defaults.get("func") is func:
            return sub.prog
    return parser.prog


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse, run the chosen subcommand, and turn `UsageError` / `CommandFailed` into
    `longdoc <command>: error: <message>` and exit 2 / 1. argparse's own errors already
    read so (the subparser's prog is `longdoc <command>`) and exit 2."""
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(func(args) or 0)
    except (UsageError, CommandFailed) as exc:
        print(f"{_command_prog(parser, func)}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILED
    except KeyboardInterrupt:
        return 130


# --------------------------------------------------------------------------- shared groups


def positive_float(text: str) -> float:
    """An argparse type: a number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {text})")
    return value


def existing_dir(text: str) -> Path:
    """An argparse type: a folder that exists (a missing one is a usage error, exit 2,
    before anything heavy is imported)."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"directory {text} does not exist")
    return path


def existing_file(text: str) -> Path:
    """An argparse type: a file that exists."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file {text} does not exist")
    return path


def add_server_args(
    parser: argparse.ArgumentParser,
    timeout: float = 120.0,
    url_group: argparse._ActionsContainer | None = None,
) -> None:
    """How to reach a running server: `classify`, `bench`, `evaluate --url`.
    `url_group`: where `--url` goes when it is one of several sources (a mutually exclusive
    group, as in `evaluate`). `server_kwargs` turns the flags into the client's arguments."""
    # The header and address rules live with the client; it imports nothing heavy.
    from longdoc.client.transport import DEFAULT_PORTS, PROTOCOLS, parse_header

    g = parser.add_argument_group("server")
    (url_group or g).add_argument(
        "--url",
        metavar="HOST:PORT",
        help=f"server address (default: 127.0.0.1:{DEFAULT_PORTS['grpc']} for gRPC, "
        f"127.0.0.1:{DEFAULT_PORTS['http']} for HTTP)",
    )
    g.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    g.add_argument("--model", default=ENSEMBLE, help="the ensemble to call")
    g.add_argument(
        "--header",
        type=parse_header,
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="send this header with every request (repeatable), e.g. admin-key:KEY for a "
        "server started with --restrict-api (sent as triton-grpc-protocol-admin-key over gRPC)",
    )
    g.add_argument(
        "--timeout",
        type=positive_float,
        default=timeout,
        metavar="S",
        help="deadline per document in seconds, retries included; a document past it fails "
        "and is never sent again",
    )
    g.add_argument(
        "--retries",
        type=int,
        default=None,
        metavar="N",
        help="at most N retries of what the server did not run (unavailable, restarting, "
        "queue full, connection refused); by default it is retried until the --timeout "
        "deadline",
    )


def server_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The server group's flags as `DocumentClassifierClient(**...)` arguments."""
    from longdoc.client.transport import default_url

    return {
        "url": args.url or default_url(args.protocol),
        "protocol": args.protocol,
        "model": args.model,
        "headers": dict(args.header),
        "timeout_s": args.timeout,
        "retries": args.retries,
    }


# The chunking flags: (keywords, help); the field of `ChunkingConfig` is the flag's name.
CHUNKING_FLAGS: dict[str, tuple[dict[str, Any], str]] = {
    "max_length": ({"type": int}, "window in tokens"),
    "overlap": ({"type": int}, "tokens shared by neighbouring windows"),
    "max_chunks": (
        {"type": int},
        "opt-in cap on the windows read per document, past it --overflow decides (0: every window)",
    ),
    "overflow": (
        {"choices": OVERFLOW_POLICIES},
        "past --max-chunks: error, head (first N) or head_tail (both ends)",
    ),
    "strategy": (
        {"choices": STRATEGIES},
        "fixed: full windows, a short last one; balanced: tokens spread evenly over them",
    ),
    "seq_buckets": (
        {"type": int, "nargs": "+"},
        "lengths windows are padded to, the smallest that fits; --max-length is always one",
    ),
    "max_bytes": ({"type": int}, "largest accepted document in bytes"),
    "max_windows": ({"type": int}, "safety limit on the windows one document may send"),
}


def add_chunking_args(parser: argparse.ArgumentParser, title: str) -> None:
    """How documents become windows: `export` and `train`, same flags, same defaults
    (`contract.CHUNKING_DEFAULTS`). Every flag is None when not given, so that `export`
    keeps what the checkpoint recorded; `chunking_from_args` returns the given ones."""
    group = parser.add_argument_group(title)
    for field, (kwargs, text) in CHUNKING_FLAGS.items():
        group.add_argument(
            "--" + field.replace("_", "-"),
            metavar=None if "choices" in kwargs else "N",
            help=f"{text} (default: {_shown(CHUNKING_DEFAULTS[field])})",
            **kwargs,
        )


def chunking_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The chunking flags that were given, as `ChunkingConfig` fields (overrides)."""
    given = {key: getattr(args, key) for key in CHUNKING_DEFAULTS}
    if given["seq_buckets"] is not None:
        given["seq_buckets"] = tuple(given["seq_buckets"])
    return {key: value for key, value in given.items() if value is not None}


def add_output_arg(parser: argparse.ArgumentParser, contents: str, required: bool = True) -> None:
    """`--output DIR`: the folder a command creates (if missing) and writes its files into,
    the same meaning in every subcommand."""
    parser.add_argument(
        "--output",
        type=Path,
        required=required,
        metavar="DIR",
        help=f"folder to write {contents} into (created if missing)",
    )


def deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Keep accepting `old` (and its `LONGDOC_` variable) for the flag `new`, hidden from
    --help, with a warning when used on the command line."""
    target = parser._option_string_actions[new]
    parser.add_argument(
        old,
        action=DeprecatedAlias,
        replacement=new,
        dest=target.dest,
        type=target.type,
        choices=target.choices,
        metavar=target.metavar,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )


def config_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """A dataclass from the parsed flags: each field takes the flag of the same name,
    `overrides` the others (renamed or converted); a field with neither keeps its default.
    One place instead of a field-by-field copy per command."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {', '.join(unknown)}")
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return cls(**{**values, **overrides})
