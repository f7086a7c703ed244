"""`longdoc classify`: documents in, one JSON line per document out."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from longdoc.cli_options import UsageError, add_server_args, server_kwargs

EPILOG = """inputs:
  FILE.txt        one document per file (UTF-8)
  DIR             every *.txt below DIR, recursively
  FILE.jsonl      one document per line: {"id": ..., "text": ...}
  -               one document from stdin

examples:
  longdoc classify contracts/ --top-k 3
  longdoc classify docs.jsonl --protocol http --url 127.0.0.1:8000 --concurrency 16
  cat report.txt | longdoc classify - --explain
  longdoc classify docs/ --header admin-key:$KEY --timeout 600
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "classify",
        help="classify documents with a running server",
        description=(
            "Send documents to the document_classifier ensemble and print one JSON line per "
            "document on stdout: id, label, probabilities, num_chunks (windows read),"
            " total_chunks (windows in the document) and, with --explain, the "
            "passage with the highest chunk score. A document that cannot be read or sent "
            "(e.g. JSON text with a lone surrogate) or that the server refuses gets an "
            '"error" line; the others are classified. Exits 1 if any document failed, 3 if '
            "the server could not be reached (nothing was classified)."
        ),
        epilog=EPILOG,
    )
    p.add_argument("inputs", nargs="+", help="files, directories, .jsonl files or - (stdin)")
    add_server_args(p)
    p.add_argument("--concurrency", type=int, default=8, help="documents in flight")
    p.add_argument("--top-k", type=int, default=None, help="probabilities to print (default: all)")
    p.add_argument("--explain", action="store_true", help="print the decisive passage")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def iter_documents(inputs: list[str]) -> Iterator[tuple[str, bytes | str]]:
    """(id, raw bytes) for every document named by ``inputs``; ids are paths or JSON ids.
    A JSON Lines text is yielded as the ``str`` it holds (the client encodes it, and a
    text that is not valid Unicode fails as that document's error)."""
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
                        raise UsageError(message) from None
                    yield str(record.get("id", f"{path}:{number}")), str(text)
        elif path.is_file():
            yield str(path), path.read_bytes()
        else:
            raise UsageError(f"{item}: no such file or directory")


def dumps(record: dict) -> str:
    """One JSON line; ``\\u`` escapes where a string (an id from JSON) is not valid
    Unicode, so that writing it can never fail."""
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(record)
    return line


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def to_record(result, text: bytes | str, top_k: int | None, explain: bool) -> dict:
    if not result.ok:
        return {"id": result.id, "error": result.error}
    record = {
        "id": result.id,
        "label": result.label,
        "probabilities": dict(result.top(top_k or len(result.probabilities))),
        "num_chunks": result.num_chunks,
        "total_chunks": result.total_chunks,
    }
    if explain:
        index = result.best_chunk()
        start, end = (int(v) for v in result.chunk_spans[index])
        decoded = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
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
        raise UsageError("no documents found")
    client = DocumentClassifierClient(**server_kwargs(args))
    show = len(documents) > 3 and not args.no_progress
    bar = tqdm(total=len(documents), unit="doc", file=sys.stderr, disable=not show)
    try:
        results = client.classify(
            [text for _, text in documents],
            ids=[doc_id for doc_id, _ in documents],
            concurrency=args.concurrency,
            on_result=lambda _: bar.update(),
        )
    except ServerUnavailable as exc:
        print(_printable(f"longdoc classify: error: server unavailable: {exc}"), file=sys.stderr)
        return 3
    finally:
        bar.close()
    failed = []
    for result, (_, text) in zip(results, documents):
        print(dumps(to_record(result, text, args.top_k, args.explain)))
        if not result.ok:
            failed.append(result)
    for result in failed:
        print(_printable(f"failed: {result.id}: {result.error}"), file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(results)} documents failed", file=sys.stderr)
    return 1 if failed else 0
