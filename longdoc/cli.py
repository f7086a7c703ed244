"""The `longdoc` command line: one entry point, one subcommand per job.

Each subcommand lives next to the code it drives and registers itself here through a
`register(subparsers)` function; heavy imports happen only when a subcommand runs, so
`longdoc --help` stays instant. The convention every subcommand follows (defaults in
`--help`, `LONGDOC_<FLAG>` variables, `longdoc <command>: error:` and exit 2 / 1) is applied
here to all of them at once: `longdoc.cli_options`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from longdoc.cli_options import Parser, apply_convention, run

# (module, what it adds) in the order `--help` lists them.
SUBCOMMAND_MODULES = [
    "longdoc.export.cli",  # longdoc export
    "longdoc.server.cli",  # longdoc serve
    "longdoc.client.cli",  # longdoc classify
    "longdoc.bench.cli",  # longdoc bench
    "longdoc.demo",  # longdoc demo
    "longdoc.data",  # longdoc data
    "longdoc.training.cli",  # longdoc train
    "longdoc.training.sweep",  # longdoc sweep
    "longdoc.evaluate",  # longdoc evaluate
    "longdoc.batch.cli",  # longdoc batch
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    return apply_convention(parser)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
