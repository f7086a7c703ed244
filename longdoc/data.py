"""Labelled documents: the kernel-docs corpus builder and the readers `train`/`evaluate` use.

Three layouts, one list of :class:`Example`:

* a folder per label: ``DIR/<label>/*.txt`` (what ``longdoc data kernel-docs`` writes for
  each split);
* JSON Lines: one ``{"text": ..., "label": ...}`` object per line (``"id"`` optional), or
  ``{"text": ..., "labels": [...]}`` for multi-label data;
* CSV with a header holding ``text`` and ``label`` columns (``id`` optional), or a
  ``labels`` column (``|``-separated) for multi-label data.

Single-label or multi-label is a property of the whole file: a file that mixes ``label``
and ``labels`` rows is refused. The folder layout is single-label only.

Every problem with the data is a :class:`DataError` whose message names the file (and line).

The corpus: Debian's ``linux-doc-6.1`` package, ``Documentation/**/*.rst.gz``, labelled by
top-level folder; what gives the label away (SPDX lines, ``Documentation/<folder>/`` paths,
``:doc:``/``:ref:`` targets, ``.. _label:`` anchors, include paths) is removed; content is
deduplicated by hash; the split is a hash of the path (deterministic); a manifest records
the document list's checksum. The multi-label corpus built from the same package (labels:
the MAINTAINERS entries covering each file) is :mod:`longdoc.maintainers`.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from longdoc.cli_options import UsageError, add_output_arg, existing_file
from longdoc.contract import PROBLEMS

SPLITS = ("train", "validation", "test")
KERNEL_DOCS_PACKAGE = "linux-doc-6.1"
# Folders that are not a topic (generated device-tree bindings, other languages, feature
# matrices) and the per-folder index pages (tables of contents that name their folder).
DROPPED_FOLDERS = ("devicetree", "translations", "features")
DROPPED_NAMES = ("index.rst",)
MIN_DOCS_PER_LABEL = 40
# Split by the first byte of sha256(path): 70% train, 15% validation, 15% test.
SPLIT_CUTS = (0.70, 0.85)


class DataError(ValueError):
    """Bad input data; the message names the file (and line) at fault."""


@dataclass(frozen=True)
class Example:
    """One labelled document. Single-label: ``label``, and ``labels`` empty. Multi-label:
    ``labels`` (sorted, at least one), and ``label`` their ``|``-joined form (what the
    single-label code paths that group by label, such as the stratified hold-out, see)."""

    id: str
    text: str
    label: str
    source: str  # the file (and line) it came from, for error messages
    labels: tuple[str, ...] = ()

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def label_set(self) -> tuple[str, ...]:
        """The document's labels, whatever the problem (one for single-label)."""
        return self.labels or (self.label,)


def problem_of(examples: list[Example]) -> str:
    """``multi-label`` when the rows carry label sets, else ``single-label`` (the readers
    refuse a file that mixes the two)."""
    return "multi-label" if any(e.labels for e in examples) else "single-label"


# --------------------------------------------------------------------------- readers


def _decode(data: bytes, where: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not valid UTF-8 ({exc})") from None
    return text


def _check_text(text: object, where: str) -> str:
    if not isinstance(text, str):
        raise DataError(f"{where}: 'text' must be a string (got {type(text).__name__})")
    if not text.strip():
        raise DataError(f"{where}: the document is empty or whitespace only")
    return text


def _check_label(label: object, where: str) -> str:
    if not isinstance(label, str | int) or not str(label).strip():
        raise DataError(f"{where}: missing or empty 'label' (or 'labels', for multi-label data)")
    return str(label).strip()


def _check_labels(labels: object, where: str) -> tuple[str, ...]:
    """A multi-label row's labels: a non-empty list of non-empty strings, duplicates
    collapsed, sorted. ``|`` is refused inside a label (it joins them in ``Example.label``)."""
    if not isinstance(labels, list):
        raise DataError(f"{where}: 'labels' must be a list (got {type(labels).__name__})")
    if not labels:
        raise DataError(f"{where}: 'labels' is empty (a document needs at least one label)")
    found = set()
    for label in labels:
        if not isinstance(label, str | int) or not str(label).strip():
            raise DataError(f"{where}: 'labels' holds a missing or empty label ({label!r})")
        if "|" in str(label):
            raise DataError(f"{where}: label {label!r} contains '|' (it separates labels)")
        found.add(str(label).strip())
    return tuple(sorted(found))


def _multi(example_id: str, text: str, labels: tuple[str, ...], where: str) -> Example:
    return Example(example_id, text, "|".join(labels), where, labels)


class _Kind:
    """Refuses a file that mixes single-label and multi-label rows, naming the first row
    that differs from the file's first row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.first: tuple[bool, int] | None = None

    def check(self, multi: bool, number: int) -> None:
        if self.first is None:
            self.first = (multi, number)
        elif multi != self.first[0]:
            kinds = {True: "multi-label ('labels')", False: "single-label ('label')"}
            raise DataError(
                f"{self.path}:{number}: a {kinds[multi]} row in a file whose first row "
                f"(line {self.first[1]}) is {kinds[self.first[0]]}; a file holds one kind"
            )


def read_folder(root: Path) -> list[Example]:
    """Single-label only: ``root/<label>/*.txt``."""
    examples = []
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"{root}: no label folders (expected {root}/<label>/*.txt)")
    for folder in folders:
        files = sorted(folder.rglob("*.txt"))
        if not files:
            raise DataError(f"{folder}: label folder holds no .txt files")
        for path in files:
            text = _check_text(_decode(path.read_bytes(), str(path)), str(path))
            rel = path.relative_to(root).as_posix()
            examples.append(Example(rel, text, folder.name, str(path)))
    return examples


def read_jsonl(path: Path) -> list[Example]:
    examples = []
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: the file is empty")
    kind = _Kind(path)
    for number, line in enumerate(raw.split(b"\n"), start=1):
        where = f"{path}:{number}"
        if not line.strip():
            continue
        try:
            record = json.loads(_decode(line, where))
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not a JSON object ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object with 'text' and 'label'")
        text = _check_text(record.get("text"), where)
        example_id = str(record.get("id", f"{path.name}:{number}"))
        if "labels" in record:
            if "label" in record:
                raise DataError(f"{where}: a row has 'label' or 'labels', not both")
            labels = _check_labels(record["labels"], where)
            kind.check(True, number)
            examples.append(_multi(example_id, text, labels, where))
        else:
            label = _check_label(record.get("label"), where)
            kind.check(False, number)
            examples.append(Example(example_id, text, label, where))
    return examples


def read_csv(path: Path) -> list[Example]:
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: the file is empty")
    text = _decode(raw, str(path))
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = set(reader.fieldnames or ())
    if {"label", "labels"} <= columns:
        raise DataError(f"{path}: the header names both 'label' and 'labels'; keep one")
    if "text" not in columns or not columns & {"label", "labels"}:
        raise DataError(
            f"{path}: the header must name 'text' and 'label' columns "
            f"(or 'text' and 'labels', '|'-separated, for multi-label data)"
        )
    multi = "labels" in columns
    examples = []
    for number, row in enumerate(reader, start=2):
        where = f"{path}:{number}"
        body = _check_text(row.get("text"), where)
        example_id = str(row.get("id") or f"{path.name}:{number}")
        if multi:
            cell = row.get("labels") or ""
            if not cell.strip():
                raise DataError(f"{where}: empty 'labels' (a document needs at least one label)")
            labels = _check_labels(cell.split("|"), where)
            examples.append(_multi(example_id, body, labels, where))
        else:
            label = _check_label(row.get("label"), where)
            examples.append(Example(example_id, body, label, where))
    return examples


def read_dataset(path: str | Path, problem: str | None = None) -> list[Example]:
    """Examples from a label-folder tree (single-label only), a ``.jsonl`` or a ``.csv`` file.

    ``problem`` (``single-label`` or ``multi-label``) refuses data of the other kind; None
    takes the kind the data has (see :func:`problem_of`)."""
    if problem is not None and problem not in PROBLEMS:
        raise ValueError(f"problem must be one of {', '.join(PROBLEMS)} (got {problem!r})")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        examples = read_folder(path)
    elif path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        examples = read_jsonl(path)
    elif path.suffix.lower() in (".csv",):
        examples = read_csv(path)
    else:
        raise DataError(f"{path}: unknown format (a folder per label, .jsonl or .csv)")
    if not examples:
        raise DataError(f"{path}: no documents")
    found = problem_of(examples)
    if problem is not None and found != problem:
        how = {
            "multi-label": "rows with 'labels' lists",
            "single-label": "one 'label' per document",
        }
        raise DataError(
            f"{path}: {found} data ({how[found]}), but the problem is {problem} ({how[problem]})"
        )
    return examples


def check_training_labels(examples: list[Example], where: str) -> list[str]:
    """The sorted label set (multi-label: the union of the label sets); at least two
    labels, and every label needs at least two documents to be learnt."""
    counts = Counter(label for e in examples for label in e.label_set)
    if len(counts) < 2:
        raise DataError(f"{where}: needs at least two labels (found {sorted(counts)})")
    for label, count in sorted(counts.items()):
        if count < 2:
            only = next(e.source for e in examples if label in e.label_set)
            raise DataError(
                f"{where}: label {label!r} has only one document ({only}); "
                f"every label needs at least 2"
            )
    return sorted(counts)


def check_known_labels(examples: list[Example], labels: list[str]) -> None:
    """Every label of every example (multi-label: of every label set) must be known."""
    known = set(labels)
    for e in examples:
        for label in e.label_set:
            if label not in known:
                raise DataError(
                    f"{e.source}: label {label!r} is not one the model knows ({', '.join(labels)})"
                )


def data_hash(examples: list[Example]) -> str:
    """Checksum of the document list (ids, labels, contents) in order. A multi-label row
    hashes its label set in a line of its own form (four fields), so that it never equals a
    single-label row; single-label rows hash as they always have."""
    h = hashlib.sha256()
    for e in examples:
        if e.labels:
            h.update(f"{e.id}\t{json.dumps(list(e.labels))}\t{e.sha}\tmulti-label\n".encode())
        else:
            h.update(f"{e.id}\t{e.label}\t{e.sha}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- kernel docs

_SPDX = re.compile(r"^.*SPDX-License-Identifier.*$\n?", re.MULTILINE)
_ROLE_WITH_TITLE = re.compile(r":(?:doc|ref):`([^`<]*?)\s*<[^`>]*>`")
_ROLE_BARE = re.compile(r":(?:doc|ref):`[^`]*`")
_ANCHOR = re.compile(r"^\.\. _[^:\n]+:\s*$\n?", re.MULTILINE)
_INCLUDE = re.compile(r"^\.\. (?:include|literalinclude|kernel-\w+)::.*$\n?", re.MULTILINE)
_DOC_PATH = re.compile(r"Documentation/[\w./+-]*")


def clean_rst(text: str) -> str:
    """Remove what names the document's folder (the label) from reStructuredText."""
    text = _SPDX.sub("", text)
    text = _ROLE_WITH_TITLE.sub(r"\1", text)
    text = _ROLE_BARE.sub("", text)
    text = _ANCHOR.sub("", text)
    text = _INCLUDE.sub("", text)
    text = _DOC_PATH.sub("", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def split_of(path: str) -> str:
    """Deterministic split from a hash of the document's path."""
    value = int.from_bytes(hashlib.sha256(path.encode()).digest()[:4], "big") / 2**32
    return SPLITS[0] if value < SPLIT_CUTS[0] else SPLITS[1] if value < SPLIT_CUTS[1] else SPLITS[2]


def iter_deb_members(deb: Path, select):
    """``(key, bytes)`` for every regular file of the package for which ``select(name)``
    gives a key (None skips the file), streamed through ``dpkg-deb --fsys-tarfile``."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                key = select(member.name) if member.isfile() else None
                if key is not None:
                    yield key, tar.extractfile(member).read()
    finally:
        proc.stdout.close()
        if proc.wait() != 0:
            raise DataError(f"{deb}: dpkg-deb could not read the package")


def rst_member_path(name: str) -> str | None:
    """The path under Documentation/ (``.rst``) of a package's ``.rst.gz`` file, else None."""
    marker = "/Documentation/"
    if marker not in name or not name.endswith(".rst.gz"):
        return None
    return name.split(marker, 1)[1][: -len(".gz")]


def iter_rst_members(deb: Path):
    """``(path under Documentation/, gzipped bytes)`` for every .rst.gz in the package."""
    return iter_deb_members(deb, rst_member_path)


def clean_members(members, stats: Counter, keep_top_level: bool = False) -> list[dict]:
    """The documents of ``(path under Documentation/, bytes)`` members, in path order:
    dropped folders and index pages left out, text cleaned (:func:`clean_rst`), empty
    texts dropped and content deduplicated (the first path wins); drops counted in
    ``stats``. Each document: ``path``, ``sha256`` (of the cleaned text), ``text``."""
    seen: set[str] = set()
    docs = []
    for rel, gz in sorted(members):
        stats["files"] += 1
        parts = rel.split("/")
        if len(parts) < 2 and not keep_top_level:
            stats["top_level_page"] += 1
            continue
        if len(parts) > 1 and parts[0] in DROPPED_FOLDERS:
            stats[f"folder_{parts[0]}"] += 1
            continue
        if parts[-1] in DROPPED_NAMES:
            stats["index_page"] += 1
            continue
        raw = gzip.decompress(gz) if gz[:2] == b"\x1f\x8b" else gz
        text = clean_rst(raw.decode("utf-8", errors="replace"))
        if not text.strip():
            stats["empty"] += 1
            continue
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest in seen:
            stats["duplicate"] += 1
            continue
        seen.add(digest)
        docs.append({"path": rel, "sha256": digest, "text": text})
    return docs


def collect_kernel_docs(members, min_docs: int = MIN_DOCS_PER_LABEL) -> tuple[list[dict], dict]:
    """Label, clean, deduplicate and split; returns the documents and drop statistics."""
    stats = Counter()
    docs = clean_members(members, stats)
    for d in docs:
        d["label"] = d["path"].split("/")[0]
    counts = Counter(d["label"] for d in docs)
    kept = {label for label, n in counts.items() if n >= min_docs}
    stats["small_label_docs"] = sum(n for label, n in counts.items() if label not in kept)
    docs = [d for d in docs if d["label"] in kept]
    for d in docs:
        d["split"] = split_of(d["path"])
    return docs, dict(stats)


def write_corpus(docs: list[dict], output: Path, source: dict, stats: dict) -> dict:
    if output.exists():
        for split in SPLITS:
            shutil.rmtree(output / split, ignore_errors=True)
    lines = []
    for d in docs:
        name = d["path"].replace("/", "__")[: -len(".rst")] + ".txt"
        target = output / d["split"] / d["label"] / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(d["text"], encoding="utf-8")
        lines.append(f"{d['split']}\t{d['label']}\t{d['path']}\t{d['sha256']}")
    lines.sort()
    manifest = {
        "corpus": "kernel-docs",
        "source": source,
        "documents": len(docs),
        "labels": dict(sorted(Counter(d["label"] for d in docs).items())),
        "splits": {s: sum(d["split"] == s for d in docs) for s in SPLITS},
        "dropped": stats,
        "rules": {
            "dropped_folders": list(DROPPED_FOLDERS),
            "dropped_names": list(DROPPED_NAMES),
            "min_docs_per_label": MIN_DOCS_PER_LABEL,
            "split": "sha256(path)[:4] / 2**32: < 0.70 train, < 0.85 validation, else test",
        },
        "checksum": hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest(),
    }
    (output / "documents.tsv").write_text("split\tlabel\tpath\tsha256\n" + "\n".join(lines) + "\n")
    (output / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def download_deb(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    found = sorted(directory.glob(f"{KERNEL_DOCS_PACKAGE}_*.deb"))
    if found:
        return found[-1]
    result = subprocess.run(
        ["apt-get", "download", KERNEL_DOCS_PACKAGE],
        cwd=directory,
        capture_output=True,
        text=True,
    )
    found = sorted(directory.glob(f"{KERNEL_DOCS_PACKAGE}_*.deb"))
    if result.returncode != 0 or not found:
        raise DataError(
            f"apt-get download {KERNEL_DOCS_PACKAGE} failed ({result.stderr.strip()[-300:]}); "
            f"download the .deb yourself and pass --deb PATH"
        )
    return found[-1]


def build_kernel_docs(output: Path, deb: Path | None = None, min_docs: int = MIN_DOCS_PER_LABEL):
    deb = deb or download_deb(output / "_download")
    docs, stats = collect_kernel_docs(iter_rst_members(deb), min_docs)
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    return write_corpus(docs, output, {"package": deb.name, "sha256": digest}, stats)


# --------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="build a labelled long-document corpus (kernel-docs, kernel-maintainers)",
        description="Build a Linux kernel documentation corpus, ready for `longdoc train` and "
        "`longdoc evaluate`: kernel-docs (single-label, one folder per label and split) or "
        "kernel-maintainers (multi-label, JSON Lines per split).",
    )
    sub = parser.add_subparsers(dest="corpus", metavar="CORPUS", required=True)
    kd = sub.add_parser("kernel-docs", help="Debian linux-doc-6.1, labelled by folder")
    add_output_arg(kd, "the corpus (train/, validation/, test/, manifest.json)")
    kd.add_argument(
        "--deb", type=existing_file, help="a downloaded linux-doc .deb (default: apt-get)"
    )
    kd.add_argument(
        "--min-docs", type=int, default=MIN_DOCS_PER_LABEL, help="labels with fewer are dropped"
    )
    kd.set_defaults(func=_run_kernel_docs)
    from longdoc.maintainers import add_parser

    add_parser(sub)


def _run_kernel_docs(args: argparse.Namespace) -> int:
    """Exit 2 when the package cannot be had or read: unusable input."""
    try:
        manifest = build_kernel_docs(args.output, args.deb, args.min_docs)
    except DataError as exc:
        raise UsageError(str(exc)) from None
    print(
        f"{manifest['documents']} documents in {len(manifest['labels'])} labels "
        f"{manifest['splits']} -> {args.output} (checksum {manifest['checksum'][:16]})"
    )
    return 0
