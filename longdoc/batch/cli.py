"""`longdoc batch`: classify an archive into part files, on Ray Data, resumable."""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Any

from longdoc.cli_options import (
    EXIT_FAILED,
    UsageError,
    add_output_arg,
    add_server_args,
    config_from_args,
    existing_dir,
    server_kwargs,
)

EXIT_SERVERS_DOWN = 3  # as `longdoc classify`: the servers could not be reached

EPILOG = """inputs (paths or URIs pyarrow reads: s3://, gs://, hdfs://, file://):
  DIR             every *.txt below DIR, one document per file (the path is the id)
  FILE.jsonl      one {"id": ..., "text": ...} record per line
  FILE.parquet    columns --id-column and --text-column (also FILE.csv, FILE.tsv)
  FILE.txt        one document; any input may end in .gz, .bz2 or .zst

output (DIR): part-*.parquet (or .jsonl), one row per document: id, label (the top one),
  labels (the decided ones: every label over its threshold for a multi-label model),
  probabilities (the model's: softmax or per-label sigmoids) and logits (labels.txt order),
  num_chunks, total_chunks, error (null when classified), span_chunk/span_start/span_end
  (the top label's decisive window) with --explain; and _manifest.json. Rerunning the same
  command classifies only the ids not yet written.

examples:
  longdoc batch archive.parquet --url 127.0.0.1:8001 --output results/
  longdoc batch docs.jsonl --url gpu-1:8001 --url gpu-2:8001 --concurrency 16 --output out/
  longdoc batch s3://bucket/filings/ --repository build/models --actors 2 --output out/
  RAY_ADDRESS=ray://head:10001 longdoc batch ... --repository /models/r1 --num-gpus 1
"""


class _Repeatable:
    """Receives the shared server group's ``--url`` (`add_server_args(url_group=...)`) and
    declares it repeatable: a job may spread its documents over several servers."""

    def __init__(self, group: argparse._ActionsContainer) -> None:
        self.group = group

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        kwargs["action"] = "append"
        kwargs["help"] = "a server to send documents to (repeatable: documents are spread "
        kwargs["help"] += "over the servers); neither --url nor --repository: 127.0.0.1:8001"
        return self.group.add_argument(*names, **kwargs)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {text})")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "batch",
        help="classify an archive on Ray Data into part files (resumable)",
        description=(
            "Classify every document of the INPUTs with running servers (--url, repeatable) "
            "or in-process onnxruntime actors (--repository) on Ray Data, locally or on a "
            "cluster, into part files in --output DIR. Each id lands exactly once: rerun the "
            "same command after a crash and only what is missing is classified. A document "
            "that cannot be classified gets a row with its error; exit 1 if any did, 2 for "
            "unusable input (duplicate ids, a folder holding another model's results), 3 if "
            "no server answered (rerun to continue)."
        ),
        epilog=EPILOG,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders or URIs")
    add_output_arg(p, "the part files and _manifest.json")
    p.add_argument(
        "--format",
        dest="fmt",
        choices=("parquet", "jsonl"),
        default="parquet",
        help="part file format",
    )
    p.add_argument(
        "--id-column", metavar="NAME", default="id", help="id column (Parquet, CSV) or key (JSON)"
    )
    p.add_argument("--text-column", metavar="NAME", default="text", help="text column or key")
    p.add_argument(
        "--explain",
        action="store_true",
        help="add the decisive window's span (span_chunk, span_start, span_end)",
    )
    engine = p.add_argument_group("engine")
    add_server_args(p, url_group=_Repeatable(engine))
    engine.add_argument(
        "--concurrency",
        metavar="N",
        type=positive_int,
        default=8,
        help="documents in flight per server",
    )
    engine.add_argument(
        "--repository",
        type=existing_dir,
        metavar="DIR",
        help="exported model repository: without --url, classify in-process with onnxruntime "
        "actors; with --url, only recorded in the manifest (what the servers serve)",
    )
    engine.add_argument(
        "--actors", metavar="N", type=positive_int, default=1, help="Ray actors running the engine"
    )
    engine.add_argument(
        "--num-gpus",
        metavar="G",
        type=float,
        default=0.0,
        help="GPUs per in-process actor (onnxruntime's CUDA provider)",
    )
    engine.add_argument(
        "--threads",
        metavar="N",
        type=int,
        default=0,
        help="onnxruntime threads per in-process actor (0: all cores)",
    )
    ray = p.add_argument_group("ray and part files")
    ray.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="Ray cluster to run on (default: $RAY_ADDRESS, else Ray on this machine's cores)",
    )
    ray.add_argument(
        "--num-cpus", metavar="N", type=positive_int, help="CPUs of a local Ray (default: all)"
    )
    ray.add_argument(
        "--batch-size", metavar="N", type=positive_int, default=32, help="documents per engine call"
    )
    ray.add_argument(
        "--part-rows",
        metavar="N",
        type=positive_int,
        default=1000,
        help="rows per part file (at most)",
    )
    ray.add_argument(
        "--part-seconds",
        metavar="S",
        type=float,
        default=30.0,
        help="write a part at least this often (bounds the work a crash loses)",
    )
    ray.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results already in --output (another model's too)",
    )
    ray.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def config_from(args: argparse.Namespace):
    from longdoc.batch.inputs import Columns
    from longdoc.batch.job import BatchConfig

    urls = list(args.url or [])
    if not urls and args.repository is None:
        from longdoc.client.transport import default_url

        urls = [default_url(args.protocol)]
    one = copy.copy(args)
    one.url = urls[0] if urls else None
    client = {k: v for k, v in server_kwargs(one).items() if k != "url"}
    if args.num_gpus < 0 or args.part_seconds <= 0 or args.threads < 0:
        raise UsageError("--num-gpus and --threads must be >= 0, --part-seconds > 0")
    if args.num_gpus and urls:
        raise UsageError("--num-gpus is for in-process actors (--repository without --url)")
    return config_from_args(
        BatchConfig,
        args,
        columns=Columns(args.id_column, args.text_column),
        urls=urls,
        client_kwargs=client,
        progress=not args.no_progress and sys.stderr.isatty(),
    )


def run(args: argparse.Namespace) -> int:
    from longdoc.batch.engines import ServerUnavailable
    from longdoc.batch.job import run as run_job

    config = config_from(args)

    def say(text: str) -> None:
        print(f"longdoc batch: {text}", file=sys.stderr, flush=True)

    try:
        summary = run_job(config)
    except ServerUnavailable as exc:
        say(f"error: {exc}")
        return EXIT_SERVERS_DOWN
    done = summary.classified + summary.failed
    say(
        f"{summary.classified} classified, {summary.failed} failed, {summary.skipped} skipped "
        f"(already in {config.output}) in {summary.seconds:.1f} s: "
        f"{summary.documents_per_s:.2f} documents/s, {summary.windows_per_s:.1f} windows/s; "
        f"{len(summary.parts)} part files written"
    )
    if summary.stopped:
        say(f"error: the job stopped after {done} documents: {summary.stopped}")
        say("rerun the same command to classify the rest")
        return EXIT_SERVERS_DOWN if summary.servers_down else EXIT_FAILED
    if summary.failed:
        say(f"{summary.failed} of {done} documents failed (their rows hold the error)")
        return EXIT_FAILED
    return 0
