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
    unavailable = []
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a subcommand still being written
                continue
            if exc.name and exc.name.split(".")[0] != "longdoc":
                # A dependency of another extra: `longdoc[client]` has no torch, no
                # onnxruntime, no tokenizers, and `longdoc classify` must still work.
                unavailable.append(f"{name} (needs {exc.name})")
                continue
            raise
        module.register(subparsers)
    if unavailable:
        parser.epilog = (
            f"not available in this install: {', '.join(unavailable)}; "
            "pip install 'longdoc[all]' adds them"
        )
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
