"""What a batch job leaves in ``--output DIR``, and how a rerun picks up from it.

* ``part-<run>-<n>.parquet`` (or ``.jsonl``): one row per document. Each part is written
  under ``_tmp-...`` and renamed when complete (after an fsync), so a part is either whole
  or absent, whatever kills the job. Names starting with ``_`` are skipped by pyarrow,
  pandas, Spark and DuckDB when they read the folder, so ``pd.read_parquet(DIR)`` sees the
  parts alone.
* ``_manifest.json``: the model (labels, its logits on a fixed canary text, the repository
  and its export report's hash when known), the chunking, the engine, the counts and
  seconds of every run.
* ``_lock``: the host and pid of the job writing into DIR (two jobs at once would break
  exactly once); a lock whose process is gone is taken over.

Only the driver writes here (the actors send their rows back to it): Ray may run a task
twice after a failure, but each row reaches the driver once, and the driver writes it once.
A rerun reads the id column of every part: those ids are skipped. Rows with an error are
written too, so a rerun does not send a document the server refused again.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from longdoc.cli_options import UsageError

MANIFEST = "_manifest.json"
LOCK = "_lock"
TEMP_PREFIX = "_tmp-"
PART_PREFIX = "part-"
SUFFIXES = {"parquet": ".parquet", "jsonl": ".jsonl"}
FORMAT_VERSION = 1
# The same model on other hardware or in FP16 moves logits by ~1e-3 (DESIGN.md); another
# model's differ by about their own size. Tolerance: 1% of the largest logit, at least 1e-3.
CANARY_RTOL, CANARY_ATOL = 1e-2, 1e-3


def result_schema(explain: bool) -> pa.Schema:
    """The row of one document. ``label``: the top label; ``labels``: the decided labels
    (one for a single-label model; for a multi-label one every label over its threshold,
    possibly none). ``probabilities`` (the model's: softmax, or a sigmoid per label) and
    ``logits`` follow labels.txt order (the manifest's ``model.labels``); ``span_*``: the
    top label's decisive window (``--explain``: the largest window weight)."""
    fields = [
        ("id", pa.string()),
        ("label", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("probabilities", pa.list_(pa.float32())),
        ("logits", pa.list_(pa.float32())),
        ("num_chunks", pa.int32()),
        ("total_chunks", pa.int32()),
        ("error", pa.string()),
    ]
    if explain:
        fields += [("span_chunk", pa.int32()), ("span_start", pa.int64()), ("span_end", pa.int64())]
    return pa.schema(fields)


def new_run_id() -> str:
    """Sorts by start time; the random tail keeps two runs in one second apart."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def parts(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.iterdir()
        if p.name.startswith(PART_PREFIX) and p.suffix in SUFFIXES.values()
    )


def written_ids(directory: Path) -> pa.Array:
    """The ids of every complete part (temporary files are not parts)."""
    import pyarrow.parquet as pq

    arrays = []
    for path in parts(directory):
        if path.suffix == ".parquet":
            arrays.append(pq.read_table(path, columns=["id"]).column(0).combine_chunks())
        else:
            with path.open("rb") as handle:
                arrays.append(pa.array([json.loads(line)["id"] for line in handle], pa.string()))
    if not arrays:
        return pa.array([], pa.string())
    return pa.concat_arrays([a.cast(pa.string()) for a in arrays])


def read_manifest(directory: Path) -> dict | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError(f"{path}: not a manifest ({exc}); use --overwrite") from None


def write_json(path: Path, data: dict) -> None:
    """Atomically (temporary name, fsync, rename)."""
    temp = path.with_name(TEMP_PREFIX + path.name)
    with temp.open("w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def model_mismatch(old: dict, new: dict) -> str | None:
    """Why the results in a folder (``old``: its manifest's model) are not those of the
    model of this run, or None when they are the same model: same labels, and logits on the
    canary text within `CANARY_RTOL` / `CANARY_ATOL` (an FP16 export of one checkpoint
    matches its FP32)."""
    if old.get("labels") != new.get("labels"):
        return f"labels {old.get('labels')} there, {new.get('labels')} here"
    a, b = np.asarray(old.get("canary_logits", [])), np.asarray(new.get("canary_logits", []))
    if a.shape != b.shape:
        return "no canary logits to compare"
    delta = float(np.max(np.abs(a - b))) if a.size else 0.0
    tolerance = max(CANARY_ATOL, CANARY_RTOL * float(np.max(np.abs(a), initial=0.0)))
    if delta > tolerance:
        return f"logits on the canary text differ by {delta:.3g} (same model: <= {tolerance:.3g})"
    return None


def check_rerun(manifest: dict, model: dict, settings: dict, directory: Path) -> None:
    """A rerun into a folder must use the same model and write the same kind of rows."""
    reason = model_mismatch(manifest.get("model", {}), model)
    if reason is None:
        old = manifest.get("output", {})
        changed = [k for k in settings if k in old and old[k] != settings[k]]
        if changed:
            reason = ", ".join(f"{k} was {old[k]!r}, now {settings[k]!r}" for k in changed)
    if reason:
        raise UsageError(
            f"{directory} holds results of another job ({reason}); refusing to mix them: "
            "use another --output, or --overwrite to replace them"
        )


@dataclass
class Lock:
    """`LOCK` in the folder while a job writes there."""

    path: Path

    def acquire(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        if self.path.exists():
            try:
                holder = json.loads(self.path.read_text())
            except ValueError:
                holder = {}
            if holder.get("host") == me["host"] and _alive(int(holder.get("pid", 0))):
                raise UsageError(
                    f"another batch job (pid {holder['pid']}) is writing into "
                    f"{self.path.parent}; wait for it, or stop it first"
                )
            if holder.get("host") not in (None, me["host"]):
                raise UsageError(
                    f"{self.path} says a job on {holder['host']} writes there; if it is gone, "
                    "delete the file"
                )
        write_json(self.path, me)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare(directory: Path, overwrite: bool) -> Lock:
    """Create the folder, take its lock, drop what a killed run left half written (and,
    with ``overwrite``, every earlier result)."""
    directory.mkdir(parents=True, exist_ok=True)
    lock = Lock(directory / LOCK)
    lock.acquire()
    for path in directory.iterdir():
        stale = path.name.startswith(TEMP_PREFIX)
        if stale or (overwrite and (path.name == MANIFEST or path in parts(directory))):
            path.unlink()
    return lock


@dataclass
class PartWriter:
    """Buffers result rows and writes them as part files: when ``part_rows`` rows are
    waiting or ``part_seconds`` have passed since the last part, so that a killed driver
    loses at most that much work."""

    directory: Path
    run_id: str
    fmt: str
    schema: pa.Schema
    part_rows: int = 1000
    part_seconds: float = 30.0
    written: list[str] = field(default_factory=list)
    rows: int = 0
    _buffer: list[pa.Table] = field(default_factory=list)
    _waiting: int = 0
    _last: float = field(default_factory=time.monotonic)

    def add(self, table: pa.Table) -> bool:
        """Queue rows; True when a part was written."""
        if table.num_rows:
            self._buffer.append(table.select(self.schema.names).cast(self.schema))
            self._waiting += table.num_rows
        due = time.monotonic() - self._last >= self.part_seconds
        if self._waiting >= self.part_rows or (due and self._waiting):
            self.flush()
            return True
        return False

    def flush(self) -> None:
        self._last = time.monotonic()
        if not self._waiting:
            return
        table = pa.concat_tables(self._buffer)
        name = f"{PART_PREFIX}{self.run_id}-{len(self.written):05d}{SUFFIXES[self.fmt]}"
        temp = self.directory / (TEMP_PREFIX + name)
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, temp)
        else:
            with temp.open("w") as handle:
                for row in table.to_pylist():
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        with temp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, self.directory / name)
        _fsync_dir(self.directory)
        self.written.append(name)
        self.rows += table.num_rows
        self._buffer, self._waiting = [], 0


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
