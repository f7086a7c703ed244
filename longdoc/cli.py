"""The `longdoc` command line: one entry point, one subcommand per job.

Each subcommand lives next to the code it drives and registers itself here through a
`register(subparsers)` function; heavy imports happen only when a subcommand runs, so
`longdoc --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, what it adds) in the order `--help` lists them.
SUBCOMMAND_MODULES = [
    "longdoc.export.cli",  # longdoc export
    "longdoc.server.cli",  # longdoc serve
    "longdoc.client.cli",  # longdoc classify
    "longdoc.client.bench.cli",  # longdoc bench
    "longdoc.demo",  # longdoc demo
    "longdoc.data",  # longdoc data
    "longdoc.train",  # longdoc train
    "longdoc.evaluate",  # longdoc evaluate
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longdoc",
        description=(
            "Classify whole long documents with a BERT encoder served by NVIDIA Triton: "
            "export a checkpoint to ONNX, serve it, classify documents, benchmark."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a subcommand still being written
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
