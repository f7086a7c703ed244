"""The one command-line convention (`longdoc.cli_options`), for every subcommand at once:
defaults in `--help`, `LONGDOC_<FLAG>` variables (the command line wins), and
`longdoc <command>: error: ...` with exit 2 for a usage error or unusable input, 1 for work
that failed. Fast: parsers only, no server, no export."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from longdoc import cli_options
from longdoc.cli import build_parser, main
from longdoc.cli_options import CommandFailed, Parser, UsageError, apply_convention


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LONGDOC_* variable of the machine running the tests leaks into a parse."""
    import os

    for name in [n for n in os.environ if n.startswith("LONGDOC_")]:
        monkeypatch.delenv(name)


def leaf_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every parser that runs something (`longdoc export`, `longdoc data kernel-docs`...)."""
    tree = cli_options.iter_parsers(build_parser())
    return {p.prog: p for p in tree if p._defaults.get("func") is not None}


def test_every_subcommand_is_covered() -> None:
    progs = set(leaf_parsers())
    for command in ("export", "serve", "classify", "demo", "data kernel-docs"):
        assert f"longdoc {command}" in progs, progs


@pytest.mark.parametrize("prog", sorted(leaf_parsers()))
def test_help_shows_every_default(prog: str) -> None:
    parser = leaf_parsers()[prog]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._HelpAction):
            continue
        line = " ".join(formatter._format_action(action).split())
        assert "default" in line or "(required)" in line, (prog, line)
    text = " ".join(parser.format_help().split())
    assert "reads LONGDOC_<FLAG>" in text and "2 a usage error or unusable input" in text


def test_help_shows_declared_values() -> None:
    helps = {p: " ".join(parser.format_help().split()) for p, parser in leaf_parsers().items()}
    assert "--http-port PORT HTTP port (default: 8000)" in helps["longdoc serve"]
    assert "--protocol {grpc,http} (default: grpc)" in helps["longdoc classify"]
    assert "(default: 128 256 384 512)" in helps["longdoc export"]
    assert "--output DIR folder to write the model repository into" in helps["longdoc export"]


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_environment_sets_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LONGDOC_PROTOCOL", "http")
    monkeypatch.setenv("LONGDOC_TIMEOUT", "5")  # a typed float
    monkeypatch.setenv("LONGDOC_RETRIES", "2")  # a typed int
    monkeypatch.setenv("LONGDOC_EXPLAIN", "yes")  # store_true
    monkeypatch.setenv("LONGDOC_HEADER", "'admin-key: k k' x-extra:1")  # a list, shell-quoted
    args = parse("classify", "doc.txt")
    assert (args.protocol, args.timeout, args.retries, args.explain) == ("http", 5.0, 2, True)
    assert args.header == [("admin-key", "k k"), ("x-extra", "1")]
    monkeypatch.setenv("LONGDOC_EXPLAIN", "0")
    assert parse("classify", "doc.txt").explain is False

    # Required flags and a required either-or group can come from the environment too.
    monkeypatch.setenv("LONGDOC_PRESET", "tiny")
    monkeypatch.setenv("LONGDOC_OUTPUT", str(tmp_path))
    monkeypatch.setenv("LONGDOC_MAX_CHUNKS", "8")
    monkeypatch.setenv("LONGDOC_SEQ_BUCKETS", "128 256")
    monkeypatch.setenv("LONGDOC_SKIP_PARITY", "true")
    args = parse("export")
    assert (args.preset, args.output, args.max_chunks) == ("tiny", tmp_path, 8)
    assert args.seq_buckets == [128, 256] and args.skip_parity is True
    assert cli_options.chunking_from_args(args) == {"max_chunks": 8, "seq_buckets": (128, 256)}

    monkeypatch.setenv("LONGDOC_MIN_DOCS", "3")  # a nested subcommand
    assert parse("data", "kernel-docs").min_docs == 3


def test_command_line_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LONGDOC_MAX_CHUNKS", "8")
    monkeypatch.setenv("LONGDOC_PRESET", "tiny")
    monkeypatch.setenv("LONGDOC_OUTPUT", str(tmp_path))
    args = parse("export", "--max-chunks", "2", "--checkpoint", str(tmp_path))
    assert args.max_chunks == 2
    assert args.checkpoint == tmp_path and args.preset is None  # one of an either-or pair
    monkeypatch.setenv("LONGDOC_HEADER", "a:1 b:2")
    assert parse("classify", "x", "--header", "c:3").header == [("c", "3")]  # not appended
    # A variable that does not parse is no error when the command line replaces it...
    monkeypatch.setenv("LONGDOC_RETRIES", "many")
    assert parse("classify", "x", "--retries", "1").retries == 1
    # ...and the parser is left as declared: the next parse sees the declared defaults.
    monkeypatch.delenv("LONGDOC_MAX_CHUNKS")
    assert parse("export").max_chunks is None


def test_bad_variable_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value, why in (
        ("LONGDOC_RETRIES", "many", "$LONGDOC_RETRIES='many': invalid int value"),
        ("LONGDOC_PROTOCOL", "ftp", "$LONGDOC_PROTOCOL='ftp': choose from grpc, http"),
        ("LONGDOC_EXPLAIN", "maybe", "$LONGDOC_EXPLAIN='maybe': expected one of"),
    ):
        monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit) as exit_:
            main(["classify", "x"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert f"longdoc classify: error: {why}" in err, err
        monkeypatch.delenv(name)


def test_usage_errors_exit_2_with_the_command_prefix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for argv, message in (
        (["export", "--preset", "tiny"], "longdoc export: error: the following arguments"),
        (["classify", "x", "--timeout", "0"], "longdoc classify: error: argument --timeout"),
        (["serve", "--http-port", "eighty"], "longdoc serve: error: argument --http-port"),
        (["data", "kernel-docs"], "longdoc data kernel-docs: error: the following"),
        # unusable input caught while parsing: a checkpoint folder that is not there
        (
            ["export", "--checkpoint", str(tmp_path / "nope"), "--output", str(tmp_path)],
            "longdoc export: error: argument --checkpoint: directory",
        ),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2, argv
        assert message in capsys.readouterr().err, argv


def test_unusable_input_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Found while the command runs: `UsageError` -> `longdoc <command>: error:`, exit 2."""
    missing = tmp_path / "missing.txt"
    assert main(["classify", str(missing), "--no-progress"]) == 2
    assert f"longdoc classify: error: {missing}: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": 1}) + "\n")
    assert main(["classify", str(bad)]) == 2
    assert "longdoc classify: error: " in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["classify", str(empty)]) == 2
    assert "longdoc classify: error: no documents found" in capsys.readouterr().err


def test_exit_codes_of_run(capsys: pytest.CaptureFixture[str]) -> None:
    def unusable(args: argparse.Namespace) -> int:
        raise UsageError("no such thing")

    def failed(args: argparse.Namespace) -> int:
        raise CommandFailed("parity failed")

    parser = Parser(prog="longdoc")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("a").set_defaults(func=unusable)
    sub.add_parser("b").set_defaults(func=failed)
    sub.add_parser("c").set_defaults(func=lambda args: 0)
    apply_convention(parser)
    assert cli_options.run(parser, ["a"]) == 2
    assert capsys.readouterr().err == "longdoc a: error: no such thing\n"
    assert cli_options.run(parser, ["b"]) == 1
    assert capsys.readouterr().err == "longdoc b: error: parity failed\n"
    assert cli_options.run(parser, ["c"]) == 0
    assert cli_options.run(parser, []) == 2  # no command: the help, on stderr


def test_config_from_args() -> None:
    @dataclasses.dataclass
    class Config:
        url: str
        retries: int = 4
        headers: tuple = ()

    args = argparse.Namespace(url="h:1", retries=2, header=[("a", "1")], other=3)
    assert cli_options.config_from_args(Config, args, headers=tuple(args.header)) == Config(
        "h:1", 2, (("a", "1"),)
    )
    assert cli_options.config_from_args(Config, argparse.Namespace(url="u")) == Config("u")
    with pytest.raises(TypeError, match="no field nope"):
        cli_options.config_from_args(Config, args, nope=1)


def test_chunking_defaults_are_the_config_defaults() -> None:
    from longdoc.chunking import ChunkingConfig
    from longdoc.contract import CHUNKING_DEFAULTS

    assert ChunkingConfig() == ChunkingConfig(**CHUNKING_DEFAULTS)
    assert set(CHUNKING_DEFAULTS) == {f.name for f in dataclasses.fields(ChunkingConfig)}


def test_the_convention_imports_nothing_heavy() -> None:
    """`longdoc[client]` has no torch, onnxruntime or tokenizers: `longdoc classify` and the
    shared groups must not need them."""
    code = (
        "import sys, longdoc.cli_options, longdoc.client.cli; "
        "print(sorted({'torch', 'onnxruntime', 'tokenizers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_server_group_url_as_one_of_several_sources(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`evaluate` reads a checkpoint, a repository or a server: --url joins that group."""
    parser = Parser(prog="longdoc evaluate")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint")
    cli_options.add_server_args(parser, url_group=source)
    args = parser.parse_args(["--url", "h:1", "--header", "a:1", "--timeout", "9"])
    client = cli_options.server_kwargs(args)
    assert client["url"] == "h:1" and client["headers"] == {"a": "1"}
    assert client["timeout_s"] == 9.0
    monkeypatch.setenv("LONGDOC_URL", "h:2")  # the environment's source gives way
    assert parser.parse_args(["--checkpoint", "c"]).url is None
    monkeypatch.setenv("LONGDOC_CHECKPOINT", "c")
    with pytest.raises(SystemExit):
        parser.parse_args([])  # two sources from the environment: which one?
    assert "$LONGDOC_CHECKPOINT and $LONGDOC_URL" in capsys.readouterr().err
