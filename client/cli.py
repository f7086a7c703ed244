"""`longdoc classify`: documents in, one JSON line per document out."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

EPILOG = """inputs:
  FILE.txt        one document per file (UTF-8)
  DIR             every *.txt below DIR, recursively
  FILE.jsonl      one document per line: {"id": ..., "text": ...}
  -               one document from stdin

examples:
  longdoc classify contracts/ --top-k 3
  longdoc classify docs.jsonl --protocol http --url 127.0.0.1:8000 --concurrency 16
  cat report.txt | longdoc classify - --explain
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "classify",
        help="classify documents with a running server",
        description=(
            "Send documents to the document_classifier ensemble and print one JSON line per "
            "document on stdout: id, label, probabilities, num_chunks (and with --explain the "
            "passage with the highest chunk score). Exits 1 if any document failed."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", help="files, directories, .jsonl files or - (stdin)")
    p.add_argument("--url", help="server address (default 127.0.0.1:8001 gRPC, :8000 HTTP)")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--model", default="document_classifier")
    p.add_argument("--concurrency", type=int, default=8, help="documents in flight")
    p.add_argument("--top-k", type=int, default=None, help="probabilities to print (all)")
    p.add_argument("--explain", action="store_true", help="print the decisive passage")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per attempt")
    p.add_argument("--retries", type=int, default=4, help="retries while unavailable")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def iter_documents(inputs: list[str]) -> Iterator[tuple[str, bytes]]:
    """(id, raw bytes) for every document named by ``inputs``; ids are paths or JSON ids."""
    for item in inputs:
        if item == "-":
            yield "stdin", sys.stdin.buffer.read()
            continue
        path = Path(item)
        if path.is_dir():
            for file in sorted(path.rglob("*.txt")):
                yield str(file), file.read_bytes()
        elif path.suffix in (".jsonl", ".ndjson"):
            with path.open("rb") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                        text = record["text"]
                    except (ValueError, KeyError, TypeError) as exc:
                        message = f"{path}:{number}: not a {{id, text}} record ({exc})"
                        raise SystemExit(message) from None
                    yield str(record.get("id", f"{path}:{number}")), str(text).encode("utf-8")
        elif path.is_file():
            yield str(path), path.read_bytes()
        else:
            raise SystemExit(f"longdoc classify: error: {item}: no such file or directory")


def to_record(result, text: bytes, top_k: int | None, explain: bool) -> dict:
    if not result.ok:
        return {"id": result.id, "error": result.error}
    record = {
        "id": result.id,
        "label": result.label,
        "probabilities": dict(result.top(top_k or len(result.probabilities))),
        "num_chunks": result.num_chunks,
    }
    if explain:
        index = result.best_chunk()
        start, end = (int(v) for v in result.chunk_spans[index])
        decoded = text.decode("utf-8", errors="replace")
        record["explain"] = {
            "chunk": index,
            "span": [start, end],
            "score": float(result.chunk_logits[index, result.labels.index(result.label)]),
            "passage": decoded[start:end],
        }
    return record


def run(args: argparse.Namespace) -> int:
    from longdoc.client.classifier import DocumentClassifierClient, ServerUnavailable
    from tqdm import tqdm

    documents = list(iter_documents(args.inputs))
    if not documents:
        print("longdoc classify: error: no documents found", file=sys.stderr)
        return 2
    url = args.url or ("127.0.0.1:8001" if args.protocol == "grpc" else "127.0.0.1:8000")
    client = DocumentClassifierClient(
        url, args.protocol, model=args.model, timeout_s=args.timeout, retries=args.retries
    )
    show = len(documents) > 3 and not args.no_progress
    bar = tqdm(total=len(documents), unit="doc", file=sys.stderr, disable=not show)
    try:
        results = client.classify(
            [text for _, text in documents], ids=[doc_id for doc_id, _ in documents],
            concurrency=args.concurrency, on_result=lambda _: bar.update(),
        )  # fmt: skip
    except ServerUnavailable as exc:
        print(f"longdoc classify: error: server unavailable: {exc}", file=sys.stderr)
        return 3
    finally:
        bar.close()
    failed = []
    for result, (_, text) in zip(results, documents):
        print(json.dumps(to_record(result, text, args.top_k, args.explain), ensure_ascii=False))
        if not result.ok:
            failed.append(result)
    for result in failed:
        print(f"failed: {result.id}: {result.error}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(results)} documents failed", file=sys.stderr)
    return 1 if failed else 0
