"""One batch job: plan, check, then Ray Data from the input pieces to the driver's part files.

::

    pieces (driver's plan) -> read tasks (Ray, blocks of `batch_size` documents)
        -> map_batches(engine) over an actor pool (ServerEngine or LocalEngine)
        -> rows streamed back to the driver -> PartWriter (temp name, rename) + manifest

Everything that can refuse the job happens before Ray starts: unusable input, duplicate
ids, servers that serve different models (or none), a folder holding another model's
results. Ray starts locally (this machine's cores) unless ``ray_address`` (or
``RAY_ADDRESS``) names a cluster; the same code then runs its read tasks and actors there.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from longdoc.batch import inputs, output

MANIFEST_FORMAT = 1


@dataclass
class BatchConfig:
    """Everything a job needs; `longdoc.batch.cli` fills it from the flags."""

    inputs: list[str]
    output: Path
    fmt: str = "parquet"
    columns: inputs.Columns = field(default_factory=inputs.Columns)
    urls: list[str] = field(default_factory=list)  # server engine
    client_kwargs: dict[str, Any] = field(default_factory=dict)
    concurrency: int = 8  # documents in flight per server
    repository: Path | None = None  # in-process engine (or, with urls, the manifest's record)
    actors: int = 1
    num_gpus: float = 0.0
    threads: int = 0  # onnxruntime threads per in-process actor (0: all)
    # Documents per engine call, and per block read: a block is also what an actor task
    # returns to the driver, so small blocks keep results streaming (and part files
    # growing) instead of arriving when a whole file is done.
    batch_size: int = 32
    part_rows: int = 1000
    part_seconds: float = 30.0
    explain: bool = False
    overwrite: bool = False
    ray_address: str | None = None
    num_cpus: int | None = None  # local Ray only
    progress: bool = True

    @property
    def engine(self) -> str:
        return "server" if self.urls else "in-process"


@dataclass
class Summary:
    classified: int = 0
    failed: int = 0
    skipped: int = 0
    windows: int = 0
    seconds: float = 0.0
    parts: list[str] = field(default_factory=list)
    stopped: str | None = None  # why the job stopped before the end
    servers_down: bool = False

    @property
    def documents_per_s(self) -> float:
        return (self.classified + self.failed) / self.seconds if self.seconds else 0.0

    @property
    def windows_per_s(self) -> float:
        return self.windows / self.seconds if self.seconds else 0.0


def identify(config: BatchConfig) -> tuple[dict, dict | None, dict]:
    """(model, chunking, engine) for the manifest: the canary through the engine's model."""
    from longdoc.batch import engines

    if config.urls:
        model, answered = engines.identity_of_servers(config.urls, config.client_kwargs)
        chunking = None
        if config.repository is not None:  # the served repository, for the record
            recorded, chunking = engines.identity_of_repository(config.repository)
            model = {**recorded, **model}
        safe = {k: v for k, v in config.client_kwargs.items() if k != "headers"}
        engine = {
            "kind": "server",
            "urls": config.urls,
            "answered_at_start": answered,
            "concurrency": config.concurrency,
            **safe,
        }
    else:
        model, chunking = engines.identity_of_repository(config.repository)
        engine = {
            "kind": "in-process",
            "actors": config.actors,
            "num_gpus": config.num_gpus,
            "threads": config.threads,
        }
    return model, chunking, engine


def run(config: BatchConfig) -> Summary:
    """Run the job to the end (or until it must stop); raises `UsageError` for what makes
    it impossible, before any work."""
    from longdoc.cli_options import UsageError

    pieces = inputs.plan(config.inputs, config.columns)
    repeated = inputs.duplicates(pieces)
    if repeated:
        raise UsageError(repeated)
    total = sum(p.count for p in pieces)
    if not total:
        raise UsageError("no documents found in " + ", ".join(config.inputs))
    model, chunking, engine = identify(config)
    settings = {"format": config.fmt, "explain": config.explain}
    lock = output.prepare(config.output, config.overwrite)
    try:
        manifest = output.read_manifest(config.output)
        if manifest is not None:
            output.check_rerun(manifest, model, settings, config.output)
        elif output.parts(config.output):
            raise UsageError(f"{config.output} holds part files but no manifest: use --overwrite")
        todo, skipped = inputs.without_done(pieces, output.written_ids(config.output))
        run_id = output.new_run_id()
        runs = (manifest or {}).get("runs", [])
        record = {
            "format": MANIFEST_FORMAT,
            "model": model,
            "chunking": chunking,
            "engine": engine,
            "output": settings,
            "inputs": config.inputs,
            "columns": asdict(config.columns),
        }
        summary = Summary(skipped=skipped)
        started = time.monotonic()

        def save(complete: bool) -> None:
            summary.seconds = time.monotonic() - started
            this = {
                "run": run_id,
                "complete": complete,
                "stopped": summary.stopped,
                "engine": engine["kind"],
                "documents": total,
                "classified": summary.classified,
                "failed": summary.failed,
                "skipped": summary.skipped,
                "windows": summary.windows,
                "seconds": round(summary.seconds, 2),
                "documents_per_s": round(summary.documents_per_s, 2),
                "windows_per_s": round(summary.windows_per_s, 2),
            }
            counts = {k: this[k] for k in ("classified", "failed", "skipped", "seconds")}
            output.write_json(
                config.output / output.MANIFEST,
                {**record, "complete": complete, "counts": counts, "runs": [*runs, this]},
            )

        save(complete=not todo)
        if todo:
            _stream(config, todo, model["labels"], run_id, summary, save)
        save(complete=summary.stopped is None)
        return summary
    finally:
        lock.release()


def _stream(
    config: BatchConfig,
    todo: list[inputs.Piece],
    labels: list[str],
    run_id: str,
    summary: Summary,
    save: Callable[[bool], None],
) -> None:
    """Ray Data from the pieces to the part files; results already received are written
    even when the job stops half way."""
    import pyarrow.compute as pc
    from tqdm import tqdm

    from longdoc.batch.engines import ServerUnavailable

    writer = output.PartWriter(
        config.output,
        run_id,
        config.fmt,
        output.result_schema(config.explain),
        config.part_rows,
        config.part_seconds,
    )
    count = sum(p.count - len(p.skip) for p in todo)
    bar = tqdm(
        total=count,
        unit="doc",
        file=sys.stderr,
        disable=not config.progress,
        dynamic_ncols=True,
        smoothing=0.1,
    )
    started = time.monotonic()
    try:
        for table in _dataset(config, todo, labels).iter_batches(
            batch_size=None, batch_format="pyarrow"
        ):
            errors = table.column("error")
            failed = len(errors) - errors.null_count
            windows = pc.sum(table.column("num_chunks")).as_py() or 0
            summary.classified += table.num_rows - failed
            summary.failed += failed
            summary.windows += windows
            if writer.add(table):
                summary.parts = list(writer.written)
                save(complete=False)
            bar.update(table.num_rows)
            elapsed = max(time.monotonic() - started, 1e-9)
            bar.set_postfix_str(
                f"{summary.windows / elapsed:.1f} windows/s, {summary.failed} failed", refresh=False
            )
    except Exception as exc:  # Ray's error of a task: the job stops, what arrived is kept
        text = str(exc)
        summary.servers_down = ServerUnavailable.__name__ in text or "no server answered" in text
        summary.stopped = text.strip().splitlines()[-1][:500] if text.strip() else repr(exc)
    except KeyboardInterrupt:
        summary.stopped = "interrupted"
    finally:
        bar.close()
        writer.flush()
        summary.parts = list(writer.written)


def _dataset(config: BatchConfig, todo: list[inputs.Piece], labels: list[str]):
    import ray
    import ray.data

    _start_ray(config)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    pieces_ref = ray.put(todo)
    items = ray.data.from_items(
        [{"piece": i} for i in range(len(todo))], override_num_blocks=min(len(todo), 1000)
    )
    read = items.map_batches(
        _read_pieces,
        batch_size=1,
        batch_format="numpy",
        num_cpus=0.25,
        fn_kwargs={"pieces_ref": pieces_ref, "rows": config.batch_size},
    )
    # Ray merges what a read task yields into blocks of up to ~128 MB; cut them back to one
    # engine batch each, so that batches spread over actors (and calls) and each result
    # block reaches the driver as soon as its batch is done.
    read = read.repartition(target_num_rows_per_block=config.batch_size)
    if config.urls:
        from longdoc.batch.engines import ServerEngine

        engine, kwargs = (
            ServerEngine,
            {
                "urls": config.urls,
                "client_kwargs": config.client_kwargs,
                "labels": labels,
                "concurrency": config.concurrency,
                "explain": config.explain,
            },
        )
        compute = ray.data.ActorPoolStrategy(
            size=config.actors, max_concurrent_calls_per_actor=4, enable_true_multi_threading=True
        )
        resources: dict[str, Any] = {"num_cpus": 0.5}
    else:
        from longdoc.batch.engines import LocalEngine

        engine, kwargs = (
            LocalEngine,
            {
                "repository": str(config.repository),
                "labels": labels,
                "threads": config.threads,
                "num_gpus": config.num_gpus,
                "explain": config.explain,
            },
        )
        compute = ray.data.ActorPoolStrategy(size=config.actors)
        resources = {"num_cpus": 1, "num_gpus": config.num_gpus or None}
    return read.map_batches(
        engine,
        batch_size=config.batch_size,
        batch_format="pyarrow",
        compute=compute,
        fn_constructor_kwargs=kwargs,
        **resources,
    )


_PIECES: dict[str, list] = {}


def _read_pieces(batch: dict, pieces_ref, rows: int):
    """A Ray task: the documents of its pieces, in blocks of ``rows``."""
    import ray

    key = pieces_ref.hex()
    if key not in _PIECES:
        _PIECES.clear()
        _PIECES[key] = ray.get(pieces_ref)
    for index in batch["piece"]:
        yield from inputs.read_piece(_PIECES[key][int(index)], rows)


def _start_ray(config: BatchConfig) -> None:
    """Connect to the cluster that ``ray_address`` / ``RAY_ADDRESS`` names, or start Ray on
    this machine; quiet, since the job has its own progress bar."""
    import logging

    import ray

    if ray.is_initialized():
        return
    address = config.ray_address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = {"address": address, "log_to_driver": False}
    kwargs.update(logging_level=logging.ERROR, configure_logging=True)
    if address == "local":
        kwargs.update(num_cpus=config.num_cpus, include_dashboard=False)
    # Ray's C++ core logs warnings meant for Ray's developers on the driver's stderr (e.g.
    # about actor constructor arguments); failures still arrive as Python exceptions.
    # RAY_BACKEND_LOG_LEVEL=info brings them back.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    ray.init(**kwargs)
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
