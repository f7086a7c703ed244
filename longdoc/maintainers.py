"""The kernel-maintainers corpus: kernel documentation labelled by MAINTAINERS entries.

A multi-label long-document corpus built from the same Debian package as kernel-docs
(``linux-doc-6.1``), which ships ``MAINTAINERS.gz`` next to ``Documentation/**/*.rst.gz``.
Each documentation file's labels are the titles of the MAINTAINERS entries (sections) that
cover it, the way ``scripts/get_maintainer.pl`` decides coverage:

* ``F:`` patterns are matched against ``Documentation/<path>`` (the original ``.rst`` name).
  A pattern with a trailing slash covers that directory and everything below it; a pattern
  without one that names a directory gets the slash (a file pattern covers only files at its
  own depth: the path must hold as many ``/`` as the pattern, so ``*`` does not reach into
  sub-directories); otherwise the pattern is a regular expression anchored at the start of
  the path, ``*`` being ``.*``, ``?`` being ``.``, ``[...]`` a character class, and every
  other character literal.
* ``X:`` patterns (same rules) exclude a file from the entry before ``F:``/``N:`` are tried.
* ``N:`` patterns are regular expressions searched anywhere in the path (Perl syntax; the
  few Python cannot compile are skipped and counted in the manifest). ``K:`` (content
  regexes) is not used: it matches patches and source files, not documentation paths.

The documents are the cleaned texts of kernel-docs (:func:`longdoc.data.clean_members`:
``clean_rst``, empty texts and ``index.rst`` dropped, content deduplicated, ``devicetree/``,
``translations/`` and ``features/`` left out), top-level pages included. An entry covering
more than :data:`MAX_ENTRY_FRACTION` of those documents is not a topic ("THE REST",
"DOCUMENTATION") and is dropped; entries covering fewer than :data:`MIN_DOCS_PER_ENTRY` are
dropped; a document left without an entry is dropped. The split is
:func:`longdoc.data.split_of` of the path under Documentation/ (the same split a file gets in
kernel-docs). Output: ``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` (one
``{"id": <path under Documentation/>, "text": ..., "labels": [...]}`` per line, sorted by
path) and ``manifest.json`` (its ``checksum`` covers a sorted split/path/labels/sha256
listing, so a rebuild is verifiably identical).
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from longdoc.cli_options import UsageError, add_output_arg, existing_file, positive_float
from longdoc.data import (
    DROPPED_FOLDERS,
    DROPPED_NAMES,
    SPLITS,
    DataError,
    clean_members,
    download_deb,
    iter_deb_members,
    rst_member_path,
    split_of,
)

CORPUS = "kernel-maintainers"
MAINTAINERS_KEY = "MAINTAINERS"
# An entry that covers more than this fraction of the documents is not a topic.
MAX_ENTRY_FRACTION = 0.20
MIN_DOCS_PER_ENTRY = 10
DOC_ROOT = "Documentation/"

_TAG = re.compile(r"^([A-Z]):\s*(.*?)\s*$")


@dataclass(frozen=True)
class Entry:
    """One MAINTAINERS section: its title and its file patterns."""

    title: str
    files: tuple[str, ...] = ()  # F:
    excludes: tuple[str, ...] = ()  # X:
    regexes: tuple[str, ...] = ()  # N:


def parse_maintainers(text: str) -> list[Entry]:
    """The entries of a MAINTAINERS file: blocks separated by blank lines whose first line
    is a title and which hold ``X: value`` lines (the header's indented examples are not)."""
    entries = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines or _TAG.match(lines[0]):
            continue
        tags: dict[str, list[str]] = {"F": [], "X": [], "N": []}
        tagged = False
        for line in lines[1:]:
            match = _TAG.match(line)
            if match:
                tagged = True
                if match.group(1) in tags and match.group(2):
                    tags[match.group(1)].append(match.group(2))
        if tagged:
            entries.append(
                Entry(lines[0].strip(), tuple(tags["F"]), tuple(tags["X"]), tuple(tags["N"]))
            )
    return entries


@functools.cache
def _pattern_regex(pattern: str) -> re.Pattern:
    out = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            out.append(pattern[i : end + 1])
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out))


def directories_of(paths) -> frozenset[str]:
    """Every directory that holds one of ``paths`` (``a/b/c.rst`` -> ``a``, ``a/b``)."""
    found = set()
    for path in paths:
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            found.add("/".join(parts[:depth]))
    return frozenset(found)


def pattern_matches(pattern: str, path: str, directories: frozenset[str] = frozenset()) -> bool:
    """Whether an ``F:``/``X:`` pattern covers ``path`` (get_maintainer.pl's rules: see the
    module docstring). ``directories`` are the known directories, so that a pattern naming
    one without a trailing slash covers everything below it."""
    if pattern.rstrip("/") in directories and not pattern.endswith("/"):
        pattern += "/"
    if not _pattern_regex(pattern).match(path):
        return False
    return pattern.endswith("/") or path.count("/") == pattern.count("/")


class Matcher:
    """Coverage of paths by entries, with compiled ``N:`` regexes (the ones Python cannot
    compile are kept in ``bad_regexes`` and ignored)."""

    def __init__(self, entries: list[Entry], directories: frozenset[str]) -> None:
        self.entries = entries
        self.directories = directories
        self.bad_regexes: list[str] = []
        self.regexes: dict[str, re.Pattern] = {}
        for entry in entries:
            for regex in entry.regexes:
                try:
                    self.regexes[regex] = re.compile(regex)
                except re.error:
                    self.bad_regexes.append(regex)

    def covers(self, entry: Entry, path: str) -> bool:
        if any(pattern_matches(p, path, self.directories) for p in entry.excludes):
            return False
        if any(pattern_matches(p, path, self.directories) for p in entry.files):
            return True
        return any(r in self.regexes and self.regexes[r].search(path) for r in entry.regexes)

    def titles(self, path: str) -> set[str]:
        return {entry.title for entry in self.entries if self.covers(entry, path)}


def _relevant(entries: list[Entry]) -> list[Entry]:
    """Entries that can cover a documentation file (a pattern under Documentation/, a
    pattern starting with a wildcard, or a regex): the others are skipped, for speed."""
    keep = []
    for entry in entries:
        files = [p for p in entry.files if p.startswith(DOC_ROOT[:-1]) or p[:1] in "*?["]
        if files or entry.regexes:
            keep.append(Entry(entry.title, tuple(files), entry.excludes, entry.regexes))
    return keep


def collect_kernel_maintainers(
    members,
    maintainers: str,
    min_docs: int = MIN_DOCS_PER_ENTRY,
    max_fraction: float = MAX_ENTRY_FRACTION,
) -> tuple[list[dict], dict, dict]:
    """Documents labelled by the entries that cover them; returns the documents (``path``,
    ``sha256``, ``text``, ``labels``, ``split``), the drop statistics, and what happened to
    the entries."""
    members = list(members)
    stats = Counter()
    docs = clean_members(members, stats, keep_top_level=True)
    directories = directories_of(DOC_ROOT + rel for rel, _ in members)
    parsed = parse_maintainers(maintainers)
    matcher = Matcher(_relevant(parsed), directories)
    for d in docs:
        d["covered"] = matcher.titles(DOC_ROOT + d["path"])
    counts = Counter(title for d in docs for title in d["covered"])
    limit = max_fraction * len(docs)
    too_broad = {t: n for t, n in sorted(counts.items()) if n > limit}
    too_small = {t: n for t, n in counts.items() if n <= limit and n < min_docs}
    kept = {t for t in counts if t not in too_broad and t not in too_small}
    out = []
    for d in docs:
        covered = d.pop("covered")
        labels = sorted(covered & kept)
        if not labels:
            stats["only_dropped_entries" if covered else "no_entry"] += 1
            continue
        d["labels"] = labels
        d["split"] = split_of(d["path"])
        out.append(d)
    entries = {
        "parsed": len(parsed),
        "covering_documentation": len(counts),
        "too_broad": too_broad,
        "too_small": len(too_small),
        "kept": len(kept),
        "unusable_regexes": sorted(set(matcher.bad_regexes)),
    }
    return out, dict(stats), entries


def write_maintainers_corpus(
    docs: list[dict], output: Path, source: dict, stats: dict, entries: dict, rules: dict
) -> dict:
    output.mkdir(parents=True, exist_ok=True)
    docs = sorted(docs, key=lambda d: d["path"])
    for split in SPLITS:
        with (output / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for d in docs:
                if d["split"] == split:
                    row = {"id": d["path"], "text": d["text"], "labels": d["labels"]}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    lines = sorted(
        f"{d['split']}\t{d['path']}\t{'|'.join(d['labels'])}\t{d['sha256']}" for d in docs
    )
    cardinality = Counter(len(d["labels"]) for d in docs)
    manifest = {
        "corpus": CORPUS,
        "problem": "multi-label",
        "source": source,
        "documents": len(docs),
        "labels": dict(sorted(Counter(t for d in docs for t in d["labels"]).items())),
        "splits": {s: sum(d["split"] == s for d in docs) for s in SPLITS},
        "label_cardinality": {str(k): cardinality[k] for k in sorted(cardinality)},
        "dropped": stats,
        "entries": entries,
        "rules": rules,
        "checksum": hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest(),
    }
    (output / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _rules(min_docs: int, max_fraction: float) -> dict:
    return {
        "documents": "Documentation/**/*.rst.gz of the package, cleaned as kernel-docs "
        "(clean_rst; empty texts dropped; content deduplicated, first path wins); "
        "top-level pages kept",
        "dropped_folders": list(DROPPED_FOLDERS),
        "dropped_names": list(DROPPED_NAMES),
        "labels": "titles of the MAINTAINERS entries covering Documentation/<path> "
        "(get_maintainer.pl: F: patterns, trailing slash or a directory = everything below, "
        "else same depth, * = .*; X: excludes first; N: regexes searched in the path; "
        "K: not used)",
        "max_entry_fraction": max_fraction,
        "min_docs_per_label": min_docs,
        "unlabelled": "a document with no kept entry is dropped",
        "split": "sha256(path under Documentation/)[:4] / 2**32: < 0.70 train, "
        "< 0.85 validation, else test",
    }


def _select(name: str) -> str | None:
    if name.endswith("/MAINTAINERS.gz") and "/Documentation/" not in name:
        return MAINTAINERS_KEY
    return rst_member_path(name)


def read_package(deb: Path) -> tuple[str, list[tuple[str, bytes]]]:
    """The MAINTAINERS text and the ``(path under Documentation/, bytes)`` members."""
    maintainers = None
    members = []
    for key, data in iter_deb_members(deb, _select):
        if key == MAINTAINERS_KEY:
            maintainers = gzip.decompress(data).decode("utf-8", errors="replace")
        else:
            members.append((key, data))
    if maintainers is None:
        raise DataError(f"{deb}: the package holds no MAINTAINERS.gz")
    if not members:
        raise DataError(f"{deb}: the package holds no Documentation/**/*.rst.gz")
    return maintainers, members


def build_kernel_maintainers(
    output: Path,
    deb: Path | None = None,
    min_docs: int = MIN_DOCS_PER_ENTRY,
    max_fraction: float = MAX_ENTRY_FRACTION,
) -> dict:
    output = Path(output)
    deb = deb or download_deb(output / "_download")
    maintainers, members = read_package(deb)
    docs, stats, entries = collect_kernel_maintainers(members, maintainers, min_docs, max_fraction)
    if not docs:
        raise DataError(f"{deb}: no documentation file is covered by a kept MAINTAINERS entry")
    source = {"package": deb.name, "sha256": hashlib.sha256(deb.read_bytes()).hexdigest()}
    rules = _rules(min_docs, max_fraction)
    return write_maintainers_corpus(docs, output, source, stats, entries, rules)


# --------------------------------------------------------------------------- CLI


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``longdoc data kernel-maintainers`` (registered by :func:`longdoc.data.register`)."""
    km = sub.add_parser(
        CORPUS, help="Debian linux-doc-6.1, multi-label: the MAINTAINERS entries of each file"
    )
    add_output_arg(km, "the corpus (train.jsonl, validation.jsonl, test.jsonl, manifest.json)")
    km.add_argument(
        "--deb", type=existing_file, help="a downloaded linux-doc .deb (default: apt-get)"
    )
    km.add_argument(
        "--min-docs", type=int, default=MIN_DOCS_PER_ENTRY, help="entries with fewer are dropped"
    )
    km.add_argument(
        "--max-fraction",
        type=positive_float,
        default=MAX_ENTRY_FRACTION,
        help="entries covering more than this fraction of the documents are dropped",
    )
    km.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    """Exit 2 when the package cannot be had or read: unusable input."""
    try:
        manifest = build_kernel_maintainers(args.output, args.deb, args.min_docs, args.max_fraction)
    except DataError as exc:
        raise UsageError(str(exc)) from None
    print(
        f"{manifest['documents']} documents, {len(manifest['labels'])} labels, "
        f"cardinality {manifest['label_cardinality']} {manifest['splits']} -> {args.output} "
        f"(checksum {manifest['checksum'][:16]})"
    )
    return 0
