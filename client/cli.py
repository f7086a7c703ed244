"""`longdoc classify`: documents in, one JSON line per document out."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

from longdoc.cli_options import UsageError, add_server_args, server_kwargs
from longdoc.contract import CHUNKING_DEFAULTS

EPILOG = """inputs:
  FILE.txt        one document per file (UTF-8)
  DIR             every *.txt below DIR, recursively: regular files inside DIR only
                  (a symbolic link leaving DIR, a FIFO or a device is refused), each at
                  most --max-bytes
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
            "document on stdout: id, label (the top label), labels (the decided labels: "
            "one, or for a multi-label model every label over its threshold), probabilities, "
            "num_chunks (windows read), total_chunks (windows in the document) and, with "
            "--explain, the decisive passage (the window with the largest weight in the "
            "label's score; for a multi-label model a list, one per decided label). A "
            "document that cannot be read or sent "
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
    p.add_argument(
        "--explain", action="store_true", help="print the decisive passage of each decided label"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument(
        "--max-bytes",
        type=int,
        default=CHUNKING_DEFAULTS["max_bytes"],
        help="largest file read from a DIR (larger ones get an error; the server's own "
        "limit is the export's --max-bytes)",
    )
    p.set_defaults(func=run)


class Unreadable(Exception):
    """A file in a DIR that is not read; the message is that document's error."""


def read_inside(path: Path, root: Path, max_bytes: int) -> bytes:
    """The bytes of ``path``, a file found in the folder ``root``, or `Unreadable`.

    A folder may hold things that are not documents and must not be read: a symbolic link
    to a file outside it (``/etc/passwd`` would be sent, and echoed by ``--explain``), a
    FIFO (``open`` would wait forever for a writer), a device (``/dev/zero`` never ends).
    So: a link must resolve inside ``root``; the file is opened without following a link
    and without blocking, must be a regular file by ``fstat`` of what was opened (no race
    with a rename), and is read with a bounded read, never past ``max_bytes`` + 1."""
    root = Path(os.path.realpath(root))
    target = Path(os.path.realpath(path))
    if target != root and root not in target.parents:
        raise Unreadable(f"{path}: a symbolic link to {target}, outside {root}: not read")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(target, flags)
    except OSError as exc:
        raise Unreadable(f"{path}: cannot be opened ({exc.strerror})") from None
    with os.fdopen(fd, "rb", buffering=0) as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise Unreadable(f"{path}: not a regular file (a FIFO, socket or device): not read")
        if info.st_size > max_bytes:
            raise Unreadable(f"{path}: {info.st_size} bytes, over the limit of {max_bytes} bytes")
        chunks, size = [], 0
        while size <= max_bytes:  # the size may change while reading: never past the limit
            chunk = handle.read(max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            raise Unreadable(f"{path}: over the limit of {max_bytes} bytes")
        return b"".join(chunks)


def read_folder(root: Path, max_bytes: int) -> Iterator[tuple[str, bytes | Unreadable]]:
    """(id, bytes or the reason it was not read) for every ``*.txt`` below ``root``, sorted.
    Symbolic links to folders are not followed (``os.walk``); links to files are read only
    where they resolve inside ``root`` (`read_inside`)."""
    found = []
    for folder, subfolders, files in os.walk(root, followlinks=False):
        subfolders.sort()
        found.extend(Path(folder) / name for name in files if name.endswith(".txt"))
    for file in sorted(found):
        try:
            yield str(file), read_inside(file, root, max_bytes)
        except Unreadable as exc:
            yield str(file), exc


def iter_documents(
    inputs: list[str], max_bytes: int = CHUNKING_DEFAULTS["max_bytes"]
) -> Iterator[tuple[str, bytes | str | Unreadable]]:
    """(id, raw bytes) for every document named by ``inputs``; ids are paths or JSON ids.
    A JSON Lines text is yielded as the ``str`` it holds (the client encodes it, and a
    text that is not valid Unicode fails as that document's error). A file of a DIR that
    is not read (`read_inside`) comes as `Unreadable`: that document's error."""
    for item in inputs:
        if item == "-":
            yield "stdin", sys.stdin.buffer.read()
            continue
        path = Path(item)
        if path.is_dir():
            yield from read_folder(path, max_bytes)
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


def _explanation(result, label: str, decoded: str) -> dict:
    """The decisive window for ``label`` (``Classification.best_chunk``: the largest
    CHUNK_WEIGHTS, the attention head's own choice; ties by the window's score)."""
    index = result.best_chunk(label)
    column = result.label_names.index(label)
    start, end = (int(v) for v in result.chunk_spans[index])
    out = {
        "chunk": index,
        "span": [start, end],
        "score": float(result.chunk_logits[index, column]),
        "passage": decoded[start:end],
        "label": label,
    }
    if result.chunk_weights is not None:
        out["weight"] = float(result.chunk_weights[index, column])
    return out


def to_record(result, text: bytes | str, top_k: int | None, explain: bool) -> dict:
    """One document's JSON line: ``label`` (the top label), ``labels`` (the decided ones:
    one for a single-label model, zero or more for a multi-label one), ``probabilities``
    (softmax, or each label's sigmoid). ``--explain``: single-label, one passage (an
    object); multi-label, a list with one passage per decided label."""
    if not result.ok:
        return {"id": result.id, "error": result.error}
    record = {
        "id": result.id,
        "label": result.label,
        "labels": list(result.labels),
        "probabilities": dict(result.top(top_k or len(result.probabilities))),
        "num_chunks": result.num_chunks,
        "total_chunks": result.total_chunks,
    }
    if explain:
        decoded = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
        if result.is_multi_label:
            record["explain"] = [_explanation(result, label, decoded) for label in result.labels]
        else:
            record["explain"] = _explanation(result, result.label, decoded)
    return record


def run(args: argparse.Namespace) -> int:
    from longdoc.client.classifier import DocumentClassifierClient, ServerUnavailable
    from tqdm import tqdm

    documents = list(iter_documents(args.inputs, args.max_bytes))
    if not documents:
        raise UsageError("no documents found")
    readable = [(doc_id, text) for doc_id, text in documents if not isinstance(text, Unreadable)]
    client = DocumentClassifierClient(**server_kwargs(args))
    show = len(documents) > 3 and not args.no_progress
    bar = tqdm(total=len(readable), unit="doc", file=sys.stderr, disable=not show)
    try:
        results = client.classify(
            [text for _, text in readable],
            ids=[doc_id for doc_id, _ in readable],
            concurrency=args.concurrency,
            on_result=lambda _: bar.update(),
        )
    except ServerUnavailable as exc:
        print(_printable(f"longdoc classify: error: server unavailable: {exc}"), file=sys.stderr)
        return 3
    finally:
        bar.close()
    answers = iter(results)
    failed = []  # (id, error)
    for doc_id, text in documents:
        if isinstance(text, Unreadable):
            record = {"id": doc_id, "error": str(text)}
        else:
            record = to_record(next(answers), text, args.top_k, args.explain)
        print(dumps(record))
        if "error" in record:
            failed.append((doc_id, record["error"]))
    for doc_id, error in failed:
        print(_printable(f"failed: {doc_id}: {error}"), file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(documents)} documents failed", file=sys.stderr)
    return 1 if failed else 0
