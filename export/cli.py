"""`longdoc export`: a checkpoint (or preset) -> verified ONNX files in a model repository."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from longdoc import contract

HEAD_CHOICES = contract.HEADS

EPILOG = """examples:
  longdoc export --checkpoint ./my-finetuned-bert --head logits-mean --output model_repository
  longdoc export --checkpoint ./bert-encoder --head transformer --random-head --output /tmp/repo
  longdoc export --preset bert-large-uncased --precision fp16 --profile gpu --output /models
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX and fill a Triton model repository",
        description=(
            "Convert a fine-tuned BERT checkpoint (or a preset architecture with random "
            "weights) and its pooling head to ONNX, at the chosen precision, write the Triton "
            "model repository for a serving profile, and check the ONNX pipeline against "
            "PyTorch on real documents (non-zero exit past tolerance)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="Hugging Face checkpoint directory")
    src.add_argument(
        "--preset", choices=contract.PRESETS,
        help="architecture with seeded random weights (latency work, tests)",
    )  # fmt: skip
    p.add_argument("--output", type=Path, required=True, help="model repository to write")
    p.add_argument(
        "--head", choices=HEAD_CHOICES, type=_head,
        help="pooling head (default: from head.json, else logits-mean for a classifier)",
    )  # fmt: skip
    p.add_argument("--random-head", action="store_true", help="seeded random pooling head")
    p.add_argument("--num-labels", type=int, default=2, help="labels of a random head/preset")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights")
    p.add_argument("--tokenizer", type=Path, help="directory with tokenizer.json")
    p.add_argument(
        "--precision", choices=contract.PRECISIONS,
        help="encoder precision (default: fp16 for --profile gpu, else fp32)",
    )  # fmt: skip
    p.add_argument("--profile", choices=contract.PROFILES, default="portable")
    p.add_argument("--tensorrt", action="store_true", help="gpu profile: TensorRT FP16 engines")
    g = p.add_argument_group("chunking (must match how the model was fine-tuned)")
    g.add_argument("--max-length", type=int, help="window length in tokens (default 512)")
    g.add_argument("--overlap", type=int, help="tokens shared by neighbours (default 128)")
    g.add_argument(
        "--max-chunks",
        type=int,
        help="opt-in cap on the windows read per document, past it --overflow decides "
        "(default 0: every window)",
    )
    g.add_argument(
        "--overflow",
        choices=contract.OVERFLOW_POLICIES,
        help="past --max-chunks: error, head (first N) or head_tail (both ends)",
    )
    g.add_argument(
        "--max-windows",
        type=int,
        help="safety limit on the windows one document may send (default 20000)",
    )
    g.add_argument(
        "--strategy",
        choices=contract.STRATEGIES,
        help="fixed: full windows, a short last one; balanced: tokens spread evenly over "
        "the windows (default: fixed)",
    )
    g.add_argument(
        "--seq-buckets",
        type=int,
        nargs="+",
        metavar="N",
        help="lengths windows are padded to, the smallest that fits (default: 128 256 384 "
        "512); max-length is always one",
    )
    g.add_argument("--max-bytes", type=int, help="largest accepted document in bytes")
    s = p.add_argument_group("serving")
    s.add_argument(
        "--max-batch-size",
        type=int,
        help="encoder windows per batch (default 64); documents of any length reach it in "
        "slices of at most this many",
    )
    s.add_argument(
        "--slice-windows",
        type=int,
        metavar="N",
        help="dispatcher: windows per encoder request (default: per profile, at most "
        "--max-batch-size)",
    )
    s.add_argument(
        "--inflight-slices",
        type=int,
        metavar="N",
        help="dispatcher: encoder requests outstanding per document (default: per profile)",
    )
    s.add_argument(
        "--dispatcher-instances",
        type=int,
        metavar="N",
        help="dispatcher: documents being encoded at once (default: per profile)",
    )
    s.add_argument(
        "--preferred-batch-sizes",
        type=int,
        nargs="+",
        metavar="N",
        help="encoder batch sizes Triton aims for (default: per profile)",
    )
    s.add_argument("--queue-delay-us", type=int, help="batching delay (default: per profile)")
    s.add_argument("--chunker-instances", type=int, help="(default: per profile)")
    s.add_argument("--encoder-instances", type=int, help="(default: per profile)")
    s.add_argument("--ort-threads", type=int, default=0, help="onnxruntime threads (0: all)")
    s.add_argument(
        "--ort-batch",
        type=int,
        metavar="N",
        help="portable encoder: windows per onnxruntime call within a Triton batch "
        "(0: the whole batch; default: 1, measured fastest on CPU)",
    )
    s.add_argument("--response-cache", action="store_true", help="cache repeated documents")
    s.add_argument(
        "--max-queue-size",
        type=int,
        default=0,
        metavar="N",
        help="encoder queue: refuse documents beyond N waiting (0: no limit)",
    )
    s.add_argument(
        "--queue-timeout-us",
        type=int,
        default=0,
        metavar="US",
        help="encoder queue: refuse a document queued longer (0: no limit)",
    )
    p.add_argument("--skip-parity", action="store_true", help="skip the parity report")
    p.set_defaults(func=run)


def _head(value: str) -> str:
    if value not in HEAD_CHOICES:
        raise argparse.ArgumentTypeError(
            f"unknown head {value!r} (choose from {', '.join(HEAD_CHOICES)})"
        )
    return value


def run(args: argparse.Namespace) -> int:
    from longdoc.export.pipeline import ExportSpec
    from longdoc.export.pipeline import run as run_export
    from longdoc.export.sizing import ServingOptions

    chunking = {
        key: value
        for key, value in {
            "max_length": args.max_length, "overlap": args.overlap,
            "max_chunks": args.max_chunks, "overflow": args.overflow,
            "strategy": args.strategy, "max_bytes": args.max_bytes,
            "max_windows": args.max_windows,
            "seq_buckets": tuple(args.seq_buckets) if args.seq_buckets else None,
        }.items()
        if value is not None
    }  # fmt: skip
    if args.tensorrt and args.profile != "gpu":
        print("longdoc export: error: --tensorrt needs --profile gpu", file=sys.stderr)
        return 2
    precision = args.precision or ("fp16" if args.profile == "gpu" else "fp32")
    preferred = tuple(args.preferred_batch_sizes) if args.preferred_batch_sizes else None
    serving = ServingOptions(
        max_batch_size=args.max_batch_size, queue_delay_us=args.queue_delay_us,
        preferred_batch_sizes=preferred,
        chunker_instances=args.chunker_instances, encoder_instances=args.encoder_instances,
        ort_threads=args.ort_threads, ort_batch=args.ort_batch, tensorrt=args.tensorrt,
        response_cache=args.response_cache,
        max_queue_size=args.max_queue_size, queue_timeout_us=args.queue_timeout_us,
        slice_windows=args.slice_windows, inflight_slices=args.inflight_slices,
        dispatcher_instances=args.dispatcher_instances,
    )  # fmt: skip
    spec = ExportSpec(
        output=args.output, checkpoint=args.checkpoint, preset=args.preset, head=args.head,
        precision=precision, profile=args.profile, random_head=args.random_head,
        num_labels=args.num_labels, seed=args.seed, tokenizer=args.tokenizer, chunking=chunking,
        serving=serving, skip_parity=args.skip_parity,
    )  # fmt: skip
    try:
        report = run_export(spec, log=lambda msg: print(msg, file=sys.stderr))
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"longdoc export: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({report['precision']}, profile {report['profile']})")
    return 0
