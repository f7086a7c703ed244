"""`longdoc export`: a checkpoint (or preset) -> verified ONNX files in a model repository."""

from __future__ import annotations

import argparse
import sys

from longdoc import contract
from longdoc.cli_options import (
    CommandFailed,
    UsageError,
    add_chunking_args,
    add_output_arg,
    chunking_from_args,
    config_from_args,
    existing_dir,
)

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
            "PyTorch on real documents (exit 1 past tolerance)."
        ),
        epilog=EPILOG,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint", type=existing_dir, metavar="DIR", help="Hugging Face checkpoint directory"
    )
    src.add_argument(
        "--preset",
        choices=contract.PRESETS,
        help="architecture with seeded random weights (latency work, tests)",
    )
    add_output_arg(p, "the model repository")
    p.add_argument(
        "--head",
        choices=HEAD_CHOICES,
        type=_head,
        help="pooling head (default: from head.json, else logits-mean for a classifier)",
    )
    p.add_argument("--random-head", action="store_true", help="seeded random pooling head")
    p.add_argument("--num-labels", type=int, default=2, help="labels of a random head/preset")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights")
    p.add_argument(
        "--tokenizer",
        type=existing_dir,
        metavar="DIR",
        help="directory with tokenizer.json (default: the checkpoint's)",
    )
    p.add_argument(
        "--precision",
        choices=contract.PRECISIONS,
        help="encoder precision (default: fp16 for --profile gpu, else fp32)",
    )
    p.add_argument(
        "--profile",
        choices=contract.PROFILES,
        default="portable",
        help="portable: python backend, any Triton; cpu, gpu: the onnxruntime backend",
    )
    p.add_argument("--tensorrt", action="store_true", help="gpu profile: TensorRT FP16 engines")
    add_chunking_args(
        p,
        "chunking (must match how the model was fine-tuned; a flag not given keeps what the "
        "checkpoint recorded, else the default shown)",
    )
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
    s.add_argument("--chunker-instances", type=int, help="tokenizing models (default: per profile)")
    s.add_argument("--encoder-instances", type=int, help="encoder models (default: per profile)")
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
    """Exit 2 for what cannot be exported (a missing checkpoint, flags that do not fit
    together), 1 when the export ran and failed (parity past tolerance)."""
    from longdoc.export.pipeline import ExportSpec
    from longdoc.export.pipeline import run as run_export
    from longdoc.export.sizing import ServingOptions

    if args.tensorrt and args.profile != "gpu":
        raise UsageError("--tensorrt needs --profile gpu")
    preferred = args.preferred_batch_sizes
    serving = config_from_args(
        ServingOptions, args, preferred_batch_sizes=tuple(preferred) if preferred else None
    )
    spec = config_from_args(
        ExportSpec,
        args,
        precision=args.precision or ("fp16" if args.profile == "gpu" else "fp32"),
        chunking=chunking_from_args(args),
        serving=serving,
    )
    try:
        report = run_export(spec, log=lambda msg: print(msg, file=sys.stderr))
    except RuntimeError as exc:  # parity.ParityError: the export ran, its check failed
        raise CommandFailed(str(exc)) from None
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {args.output} ({report['precision']}, profile {report['profile']})")
    return 0
