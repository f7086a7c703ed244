"""`longdoc demo`: the whole system in one command, on the embedded CPU Triton.

export (real all-MiniLM-L6-v2 weights + a SEEDED classifier: the labels mean nothing) ->
`portable` model repository -> tritonserver from the nvidia-pytriton wheel -> a few real
long documents (Python's own module documentation) over gRPC and HTTP -> stop.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEMO_LABELS = ["label_a", "label_b", "label_c"]
DOC_MODULES = ("json", "csv", "argparse", "logging", "pathlib", "tarfile")
NOTICE = (
    "NOTE: this is a demo. The encoder is the real all-MiniLM-L6-v2, but the classifier on top "
    "is seeded at random, so the labels mean nothing until you export a fine-tuned checkpoint "
    "(longdoc export --checkpoint DIR ...)."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="export a demo model, serve it on the embedded Triton, classify real documents",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--workdir", type=Path, default=Path("runs/demo"))
    p.add_argument("--reuse", action="store_true", help="skip export if the repository exists")
    p.set_defaults(func=run)


def real_documents(folder: Path) -> list[Path]:
    """Python's own module documentation rendered as text: long, real, on every machine."""
    import importlib
    import pydoc

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in DOC_MODULES:
        text = pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext)
        path = folder / f"{name}.txt"
        path.write_text(text)
        paths.append(path)
    return paths


def run(args: argparse.Namespace) -> int:
    from longdoc.checkpoint import make_classifier_checkpoint
    from longdoc.client.classifier import DocumentClassifierClient
    from longdoc.export.pipeline import ExportSpec
    from longdoc.export.pipeline import run as run_export
    from longdoc.server.options import ServeOptions
    from longdoc.server.probe import free_ports
    from longdoc.server.process import start_server

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    say(NOTICE)
    repo: Path = args.repository
    if not (args.reuse and (repo / "encoder" / "1" / "model.onnx").is_file()):
        checkpoint = args.workdir / "checkpoint"
        say(f"[1/4] building the demo checkpoint in {checkpoint} ...")
        make_classifier_checkpoint(checkpoint, DEMO_LABELS, seed=0)
        say(f"[2/4] exporting to {repo} (portable profile, FP32) and checking parity ...")
        run_export(ExportSpec(output=repo, checkpoint=checkpoint, head="logits-mean"), log=say)
    documents = real_documents(args.workdir / "documents")
    http, grpc, metrics = free_ports(3)
    say(f"[3/4] starting tritonserver on 127.0.0.1 (HTTP {http}, gRPC {grpc}) ...")
    started = time.perf_counter()
    with start_server(ServeOptions(
        repo, http_port=http, grpc_port=grpc, metrics_port=metrics,
        log_path=args.workdir / "tritonserver.log",
    )) as server:  # fmt: skip
        say(f"      ready in {time.perf_counter() - started:.1f} s; log {server.log_path}")
        texts = [p.read_text() for p in documents]
        ids = [p.name for p in documents]
        say(f"[4/4] classifying {len(texts)} documents over gRPC and HTTP ...")
        t0 = time.perf_counter()
        by_grpc = DocumentClassifierClient(server.grpc_url, "grpc").classify(texts, ids)
        t1 = time.perf_counter()
        by_http = DocumentClassifierClient(server.http_url, "http").classify(texts, ids)
        t2 = time.perf_counter()
    print(f"\n{'document':<14}{'chars':>8}{'chunks':>8}  {'label':<9}{'p':>7}  gRPC==HTTP")
    failures = 0
    for text, a, b in zip(texts, by_grpc, by_http):
        if not (a.ok and b.ok):
            failures += 1
            print(f"{a.id:<14} ERROR {a.error or b.error}")
            continue
        same = bool((a.logits == b.logits).all())
        print(
            f"{a.id:<14}{len(text):>8}{a.num_chunks:>8}  {a.label:<9}"
            f"{a.probabilities[a.label]:>7.3f}  {'yes' if same else 'NO'}"
        )
    chunks = sum(r.num_chunks for r in by_grpc if r.ok)
    print(
        f"\n{chunks} chunks: gRPC {t1 - t0:.1f} s, HTTP {t2 - t1:.1f} s "
        f"({chunks / (t1 - t0):.1f} chunks/s over gRPC on this machine)"
    )
    print(NOTICE)
    return 1 if failures else 0
