"""The documents of a batch job: what each INPUT holds, its ids, and how a Ray task reads it.

An INPUT is a path or a URI that pyarrow's filesystems understand (``s3://``, ``gs://``,
``hdfs://``, ``file://``, a local path), and by its name:

* a folder: every ``*.txt`` below it, one document per file, the path is the id (as
  `longdoc classify` names them);
* ``.jsonl`` / ``.ndjson``: one ``{"id": ..., "text": ...}`` record per line (a record
  without an id is named ``FILE:LINE``);
* ``.parquet`` / ``.pq``, ``.csv`` / ``.tsv``: the columns ``--id-column``, ``--text-column``;
* ``.txt``: one document; any of these may end in ``.gz``, ``.bz2`` or ``.zst``.

Planning happens on the driver and reads ids only (Parquet: the id column; CSV and JSON
Lines: every record is parsed, since their ids are inside the records): the duplicate check
must see every id before any work, and a rerun must know which ids are done. The ids are
kept in Arrow arrays (a few tens of bytes each), never the texts. The pieces (a file, a
Parquet row group, a few hundred ``.txt`` files) are then read again by Ray tasks, which
yield blocks of ``rows`` documents: no input is ever held in memory whole.

A reader's row is ``id`` (string), ``text`` (raw bytes: invalid UTF-8 stays invalid, so the
engine reports it as that document's error) and ``error`` (a document that has no text to
send: a null, a lone surrogate in JSON).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from longdoc.cli_options import UsageError

READ_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.binary()), ("error", pa.string())])
COMPRESSIONS = (".gz", ".bz2", ".zst")
KINDS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "txt",
}
FILES_PER_PIECE = 256
CSV_BLOCK_BYTES = 32 << 20  # a CSV block must hold the longest record (documents of MBs)


@dataclass(frozen=True)
class Columns:
    """Where the id and the text are: Parquet and CSV columns, JSON Lines keys."""

    id: str = "id"
    text: str = "text"


@dataclass
class Piece:
    """What one Ray task reads: a file (or some of a Parquet file's row groups) or a list
    of ``.txt`` files. ``ids``: every id in it (the plan's scan); ``skip``: those already
    written by an earlier run, dropped when read."""

    kind: str  # jsonl | csv | parquet | files
    filesystem: pafs.FileSystem
    path: str  # in `filesystem`; unused for `files`
    name: str  # the input as the user named it
    columns: Columns = field(default_factory=Columns)
    row_groups: list[int] | None = None
    files: list[str] = field(default_factory=list)  # `files`: paths in `filesystem`
    ids: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    skip: frozenset[str] = frozenset()

    @property
    def count(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict:
        # Ray ships pieces to its tasks; the scanned ids stay on the driver.
        return {**self.__dict__, "ids": pa.array([], pa.string())}


def resolve(item: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of an INPUT (a URI, or a local path)."""
    if "://" in item:
        try:
            return pafs.FileSystem.from_uri(item)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
            raise UsageError(f"{item}: {exc}") from None
    return pafs.LocalFileSystem(), str(pafs.LocalFileSystem().normalize_path(item))


def kind_of(path: str) -> str | None:
    name = path.lower()
    for suffix in COMPRESSIONS:
        name = name.removesuffix(suffix)
    return next((k for s, k in KINDS.items() if name.endswith(s)), None)


def plan(inputs: list[str], columns: Columns = Columns()) -> list[Piece]:
    """The pieces of every INPUT, with their ids; unusable input is a `UsageError`
    (exit 2), raised here, before any work."""
    pieces: list[Piece] = []
    for item in inputs:
        filesystem, path = resolve(item)
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            pieces += _folder(filesystem, path, item)
            continue
        if info.type != pafs.FileType.File:
            raise UsageError(f"{item}: no such file or directory")
        kind = kind_of(path)
        if kind is None:
            raise UsageError(
                f"{item}: unknown input type (expected a folder, .jsonl, .parquet, .csv or .txt)"
            )
        if kind == "txt":
            pieces.append(
                Piece(
                    "files",
                    filesystem,
                    path,
                    item,
                    columns,
                    files=[path],
                    ids=pa.array([item], pa.string()),
                )
            )
        elif kind == "parquet":
            pieces += _parquet(filesystem, path, item, columns)
        else:
            piece = Piece(kind, filesystem, path, item, columns)
            piece.ids = pa.array(list(_scan_ids(piece)), pa.string())
            pieces.append(piece)
    return pieces


def _folder(filesystem: pafs.FileSystem, path: str, item: str) -> list[Piece]:
    found = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
    files = sorted(
        f.path for f in found if f.type == pafs.FileType.File and f.path.endswith(".txt")
    )
    base = item.rstrip("/")
    pieces = []
    for start in range(0, len(files), FILES_PER_PIECE):
        chunk = files[start : start + FILES_PER_PIECE]
        ids = [base + "/" + f[len(path) :].lstrip("/") for f in chunk]
        pieces.append(
            Piece("files", filesystem, path, item, files=chunk, ids=pa.array(ids, pa.string()))
        )
    return pieces


def _parquet(filesystem, path: str, item: str, columns: Columns) -> list[Piece]:
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(filesystem.open_input_file(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise UsageError(f"{item}: not a Parquet file ({exc})") from None
    names = handle.schema_arrow.names
    missing = [c for c in (columns.id, columns.text) if c not in names]
    if missing:
        raise UsageError(
            f"{item}: no column {' or '.join(map(repr, missing))} (columns: {', '.join(names)}; "
            "name them with --id-column / --text-column)"
        )
    pieces = []
    for group in range(handle.metadata.num_row_groups):
        table = handle.read_row_group(group, columns=[columns.id])
        ids = _as_ids(table.column(0), item)
        pieces.append(
            Piece("parquet", filesystem, path, item, columns, row_groups=[group], ids=ids)
        )
    return pieces


def _as_ids(column: pa.ChunkedArray, item: str) -> pa.Array:
    if column.null_count:
        raise UsageError(f"{item}: {column.null_count} rows have no id (null)")
    try:
        return pc.cast(column, pa.string()).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise UsageError(f"{item}: ids must be strings or integers ({exc})") from None


def _scan_ids(piece: Piece) -> Iterator[str]:
    if piece.kind == "jsonl":
        for _, doc_id, _ in _jsonl_records(piece):
            yield doc_id
        return
    for batch in _csv_batches(piece, [piece.columns.id]):
        yield from _as_ids(pa.chunked_array([batch.column(0)]), piece.name).to_pylist()


# --------------------------------------------------------------------------- readers


def read_piece(piece: Piece, rows: int = 256) -> Iterator[pa.Table]:
    """Tables of at most ``rows`` documents (`READ_SCHEMA`), the skipped ids left out."""
    buffer: list[tuple[str, bytes, str | None]] = []
    for record in _records(piece):
        if record[0] in piece.skip:
            continue
        buffer.append(record)
        if len(buffer) >= rows:
            yield _table(buffer)
            buffer = []
    if buffer:
        yield _table(buffer)


def _table(records: list[tuple[str, bytes, str | None]]) -> pa.Table:
    ids, texts, errors = zip(*records)
    return pa.table([list(ids), list(texts), list(errors)], schema=READ_SCHEMA)


def _records(piece: Piece) -> Iterator[tuple[str, bytes, str | None]]:
    if piece.kind == "files":
        base = piece.name.rstrip("/")
        for path in piece.files:
            doc_id = (
                piece.name
                if path == piece.path
                else base + "/" + path[len(piece.path) :].lstrip("/")
            )
            with piece.filesystem.open_input_stream(path, compression="detect") as handle:
                yield doc_id, handle.read(), None
    elif piece.kind == "jsonl":
        for _, doc_id, text in _jsonl_records(piece):
            yield (doc_id, *_encoded(text))
    elif piece.kind == "csv":
        columns = [piece.columns.id, piece.columns.text]
        for batch in _csv_batches(piece, columns):
            yield from _column_records(batch, piece)
    else:
        import pyarrow.parquet as pq

        handle = pq.ParquetFile(piece.filesystem.open_input_file(piece.path))
        columns = [piece.columns.id, piece.columns.text]
        for batch in handle.iter_batches(
            batch_size=1024, row_groups=piece.row_groups, columns=columns
        ):
            yield from _column_records(batch, piece)


def _column_records(batch: pa.RecordBatch, piece: Piece) -> Iterator[tuple[str, bytes, str | None]]:
    ids = _as_ids(pa.chunked_array([batch.column(piece.columns.id)]), piece.name).to_pylist()
    text = batch.column(piece.columns.text)
    if pa.types.is_string(text.type) or pa.types.is_large_string(text.type):
        text = pc.cast(text, pa.binary() if pa.types.is_string(text.type) else pa.large_binary())
    elif not (pa.types.is_binary(text.type) or pa.types.is_large_binary(text.type)):
        raise UsageError(f"{piece.name}: column {piece.columns.text!r} holds {text.type}, not text")
    for doc_id, data in zip(ids, text.to_pylist()):
        yield (doc_id, b"", "no text (null)") if data is None else (doc_id, data, None)


def _encoded(text: object) -> tuple[bytes, str | None]:
    """A JSON text as the bytes to send. Raw invalid UTF-8 in the file (read with
    surrogateescape) comes back as those bytes, for the engine to refuse as the server
    does; a JSON ``\\ud800`` escape cannot be UTF-8 at all: its own error."""
    if not isinstance(text, str):
        return b"", f"text is not a string ({type(text).__name__})"
    try:
        return text.encode("utf-8"), None
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape"), None
    except UnicodeEncodeError as exc:
        return b"", (
            f"text is not valid Unicode: {exc.reason} {text[exc.start : exc.end]!r} at "
            f"character {exc.start} (cannot be encoded as UTF-8)"
        )


def _jsonl_records(piece: Piece) -> Iterator[tuple[int, str, object]]:
    """(line number, id, text) of every record; a line that is not a record is unusable
    input, named by file and line."""
    stream = piece.filesystem.open_input_stream(piece.path, compression="detect")
    with io.BufferedReader(stream, 1 << 20) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8", "surrogateescape"))
                text = record[piece.columns.text]
            except (ValueError, KeyError, TypeError) as exc:
                message = f"{piece.name}:{number}: not a {{id, text}} record ({exc})"
                raise UsageError(message) from None
            doc_id = record.get(piece.columns.id)
            doc_id = f"{piece.name}:{number}" if doc_id is None else str(doc_id)
            yield number, doc_id, text


def _csv_batches(piece: Piece, columns: list[str]) -> Iterator[pa.RecordBatch]:
    import pyarrow.csv as pacsv

    tsv = kind_of(piece.path) == "csv" and ".tsv" in piece.path.lower()
    types = {piece.columns.id: pa.string(), piece.columns.text: pa.binary()}
    try:
        stream = piece.filesystem.open_input_stream(piece.path, compression="detect")
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(
                delimiter="\t" if tsv else ",", newlines_in_values=True
            ),
            convert_options=pacsv.ConvertOptions(include_columns=columns, column_types=types),
        )
        yield from reader
    except (pa.ArrowInvalid, KeyError) as exc:
        raise UsageError(
            f"{piece.name}: cannot read columns {', '.join(map(repr, columns))} ({exc}; "
            "name them with --id-column / --text-column)"
        ) from None


# --------------------------------------------------------------------------- the plan's checks


def duplicates(pieces: list[Piece], shown: int = 10) -> str | None:
    """A message naming the ids that occur more than once (and where), or None."""
    if not pieces:
        return None
    counts = pc.value_counts(pa.chunked_array([p.ids for p in pieces], pa.string()))
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if not len(repeated):
        return None
    names = repeated.field("values").to_pylist()
    times = repeated.field("counts").to_pylist()
    where: dict[str, list[str]] = {}
    wanted = pa.array(names[:shown], pa.string())
    for piece in pieces:
        for doc_id in set(piece.ids.filter(pc.is_in(piece.ids, wanted)).to_pylist()):
            if piece.name not in where.setdefault(doc_id, []):
                where[doc_id].append(piece.name)
    listed = [f"{n!r} ({t} times, in {', '.join(where[n])})" for n, t in zip(names, times)][:shown]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{len(names)} ids occur more than once in the input: {'; '.join(listed)}{more}"


def without_done(pieces: list[Piece], done: pa.Array) -> tuple[list[Piece], int]:
    """The pieces with what is left to classify, and how many ids are already done. A piece
    entirely done is dropped (never read again); ``.txt`` files done are dropped by name."""
    if not len(done):
        return pieces, 0
    left, skipped = [], 0
    for piece in pieces:
        mask = pc.is_in(piece.ids, done)
        count = pc.sum(mask).as_py() or 0
        skipped += count
        if count == piece.count:
            continue
        if count == 0:
            left.append(piece)
        elif piece.kind == "files":
            keep = [f for f, m in zip(piece.files, mask.to_pylist()) if not m]
            left.append(replace(piece, files=keep, ids=piece.ids.filter(pc.invert(mask))))
        else:
            left.append(replace(piece, skip=frozenset(piece.ids.filter(mask).to_pylist())))
    return left, skipped
