"""What classifies a batch of documents inside a Ray actor: servers, or onnxruntime in-process.

Both engines take a reader's table (`inputs.READ_SCHEMA`) and return one result row per
document (`output.result_schema`); a document that cannot be classified becomes a row with
its ``error``, never an exception. ``labels`` are the decided labels (the model's
``DECISIONS``: the argmax for a single-label model, every label over its threshold for a
multi-label one) and ``probabilities`` the model's own (its ``PROBABILITIES``: softmax, or a
sigmoid per label): from the aggregator graph in-process, from the server's answer through
the client (Triton's classification extension prints them with 6 decimals, so the two
engines' probabilities agree to ~1e-6; logits are exact).

`ServerEngine` is a client of one or more running servers through the client library
(`DocumentClassifierClient`: its retry rule, its deadline per document, its parsing): one
connection per server, at most ``concurrency`` documents in flight on each, every document
sent to the server with the fewest in flight (the client's public per-document API,
``DocumentClassifierClient.session``). When a document fails, the server is asked
whether it is still ready: if it is, the failure is the document's (bad input, refused);
if not, the server is taken out of the rotation (and probed until it answers again) and the
document goes to another server. With no server left, the batch fails with
`ServerUnavailable`: the job stops and a rerun classifies what is left, rather than writing
every remaining document as failed.

`LocalEngine` runs the exported ONNX files with `longdoc.runtime.OnnxPipeline` (onnxruntime's
CUDA provider on a GPU actor where it is installed), chunking each document as the server's
chunker does and batching the windows of a whole batch by length, as the encoder's dynamic
batcher does.

`identity_of_servers` / `identity_of_repository` run a fixed canary text through the model
the job will use: its labels and logits are what `output.model_mismatch` compares on a rerun,
and whatever engine computed them (the same model served or in-process matches).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from longdoc import contract
from longdoc.batch.output import result_schema

CANARY = (
    "This agreement is made between the company and the supplier. The annual report of the "
    "board describes the results of the year, the risks of the business and the filings made "
    "with the regulator. Each party shall keep the terms of this contract confidential."
)
PROBE_SECONDS = 3.0  # a server out of the rotation is asked this often whether it is ready


class ServerUnavailable(RuntimeError):
    """No server answered: the batch cannot be classified now (the job stops)."""


def result_row(
    doc_id: str,
    labels: list[str],
    logits: np.ndarray | None = None,
    num_chunks: int = 0,
    total_chunks: int = 0,
    chunk_logits: np.ndarray | None = None,
    spans: np.ndarray | None = None,
    error: str | None = None,
    explain: bool = False,
    probabilities: np.ndarray | None = None,
    decisions: np.ndarray | None = None,
    chunk_weights: np.ndarray | None = None,
) -> dict[str, Any]:
    """One output row; with ``logits`` None, a failed document. ``probabilities`` and
    ``decisions`` are the model's (labels.txt order; ``decisions`` None: the argmax);
    ``--explain``'s span is the top label's decisive window (``results.best_chunk``: the
    largest ``chunk_weights``, ties by the window's score)."""
    from longdoc.results import best_chunk

    row: dict[str, Any] = {
        "id": doc_id,
        "label": None,
        "labels": None,
        "probabilities": None,
        "logits": None,
        "num_chunks": num_chunks,
        "total_chunks": total_chunks,
        "error": error,
    }
    if explain:
        row.update(span_chunk=None, span_start=None, span_end=None)
    if logits is None:
        return row
    best = int(np.argmax(logits))
    if decisions is None:
        decisions = np.arange(len(logits)) == best
    row.update(
        label=labels[best],
        labels=[labels[int(i)] for i in np.flatnonzero(np.asarray(decisions, dtype=bool))],
        logits=[float(v) for v in logits],
        probabilities=[float(v) for v in probabilities],
    )
    if explain and chunk_logits is not None and len(chunk_logits):
        chunk = best_chunk(chunk_logits, chunk_weights, best)
        row.update(span_chunk=chunk, span_start=int(spans[chunk][0]), span_end=int(spans[chunk][1]))
    return row


def to_table(rows: list[dict[str, Any]], explain: bool) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=result_schema(explain))


# --------------------------------------------------------------------------- servers


@dataclass
class _Server:
    url: str
    session: Any  # longdoc.client.classifier.ClientSession: one connection, its own limit
    in_flight: int = 0
    up: bool = True
    probing: bool = False

    async def classify(self, doc_id: str, data: bytes):
        """The client library's call for one document (retries, deadline, parsing); raises
        ServerUnavailable when the model's metadata cannot be read (the server is down)."""
        return await self.session.classify_one(doc_id, data)

    async def ready(self) -> bool:
        return await self.session.ready(PROBE_SECONDS)


@dataclass
class ServerEngine:
    """A Ray Data callable class: documents -> result rows over ``urls``.

    Ray may call it from several threads at once (``max_concurrent_calls_per_actor``), so
    that the next batch is already in flight while the tail of one finishes: all calls
    share one event loop, and so the per-server limits hold across batches."""

    urls: list[str]
    client_kwargs: dict[str, Any]
    labels: list[str]
    concurrency: int = 8
    explain: bool = False
    servers: list[_Server] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        from longdoc.client.classifier import DocumentClassifierClient

        self.servers = [
            _Server(
                url, DocumentClassifierClient(url, **self.client_kwargs).session(self.concurrency)
            )
            for url in self.urls
        ]
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = asyncio.run_coroutine_threadsafe(self._batch(batch), self.loop).result()
        return to_table(rows, self.explain)

    async def _batch(self, batch: pa.Table) -> list[dict[str, Any]]:
        columns = batch.to_pydict()
        jobs = [
            self._one(doc_id, data, error)
            for doc_id, data, error in zip(columns["id"], columns["text"], columns["error"])
        ]
        return list(await asyncio.gather(*jobs))

    def _pick(self, tried: set[str]) -> _Server | None:
        candidates = [s for s in self.servers if s.up and s.url not in tried]
        return min(candidates, key=lambda s: s.in_flight, default=None)

    async def _one(self, doc_id: str, data: bytes, error: str | None) -> dict[str, Any]:
        if error is not None:
            return result_row(doc_id, self.labels, error=error, explain=self.explain)
        tried: set[str] = set()
        waited_until = time.monotonic() + self.client_kwargs.get("timeout_s", 120.0)
        while True:
            server = self._pick(tried)
            if server is None:
                if time.monotonic() > waited_until:
                    raise ServerUnavailable(f"no server answered: {', '.join(self.urls)}")
                tried.clear()  # every server failed this document once: wait for one
                await asyncio.sleep(PROBE_SECONDS)
                continue
            server.in_flight += 1
            try:
                result = await server.classify(doc_id, data)
            except Exception:  # its metadata unreachable: the server is down
                result = None
            finally:
                server.in_flight -= 1
            if result is not None and result.ok:
                return self._row(result)
            if result is not None and await server.ready():
                return result_row(doc_id, self.labels, error=result.error, explain=self.explain)
            tried.add(server.url)
            self._take_out(server)

    def _row(self, result) -> dict[str, Any]:
        return result_row(
            result.id,
            self.labels,
            result.logits,
            result.num_chunks,
            result.total_chunks,
            result.chunk_logits,
            result.chunk_spans,
            explain=self.explain,
            probabilities=np.asarray([result.probabilities[name] for name in self.labels]),
            decisions=result.decisions,
            chunk_weights=result.chunk_weights,
        )

    def _take_out(self, server: _Server) -> None:
        server.up = False
        if not server.probing:
            server.probing = True
            self.loop.create_task(self._probe(server))

    async def _probe(self, server: _Server) -> None:
        while not await server.ready():
            await asyncio.sleep(PROBE_SECONDS)
        server.up, server.probing = True, False


def identity_of_servers(urls: list[str], client_kwargs: dict[str, Any]) -> tuple[dict, list[str]]:
    """The model the servers serve (labels, canary logits) and the servers that answered.
    Servers that serve different models are refused: their results would mix."""
    from longdoc.batch.output import model_mismatch
    from longdoc.cli_options import UsageError
    from longdoc.client.classifier import DocumentClassifierClient
    from longdoc.client.classifier import ServerUnavailable as Unreachable

    model, answered, down = None, [], []
    for url in urls:
        try:
            (result,) = DocumentClassifierClient(url, **client_kwargs).classify([CANARY])
        except Unreachable as exc:
            down.append(f"{url} ({exc})")
            continue
        if not result.ok:
            raise UsageError(f"{url} cannot classify the canary text: {result.error}")
        found = {
            "labels": result.label_names,
            "canary_logits": [float(v) for v in result.logits],
        }
        reason = model and model_mismatch(model, found)
        if reason:
            raise UsageError(f"{url} serves another model than {answered[0]}: {reason}")
        model = model or found
        answered.append(url)
    if model is None:
        raise ServerUnavailable("no server answered: " + "; ".join(down))
    return model, answered


# --------------------------------------------------------------------------- in-process


@dataclass
class LocalEngine:
    """A Ray Data callable class: documents -> result rows with onnxruntime in the actor."""

    repository: str
    labels: list[str]
    threads: int = 0
    num_gpus: float = 0.0
    explain: bool = False
    max_batch: int = 64

    def __post_init__(self) -> None:
        self.pipeline = load_pipeline(self.repository, self.threads, self.num_gpus, self.max_batch)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from longdoc.chunking import ChunkingError, chunk_text, decode_utf8

        columns = batch.to_pydict()
        rows: list[dict[str, Any] | None] = []
        chunked: dict[int, Any] = {}
        cfg = self.pipeline.chunking
        for index, (doc_id, data, error) in enumerate(
            zip(columns["id"], columns["text"], columns["error"])
        ):
            if error is None:
                try:
                    text = decode_utf8(data, cfg.max_bytes)
                    chunked[index] = chunk_text(text, self.pipeline.tokenizer, cfg)
                except ChunkingError as exc:
                    error = str(exc)
            rows.append(
                None
                if error is None
                else result_row(doc_id, self.labels, error=error, explain=self.explain)
            )
        vectors = self._encode(chunked)
        for index, chunks in chunked.items():
            out = self.pipeline.aggregate(vectors[index])
            rows[index] = result_row(
                columns["id"][index],
                self.labels,
                out[contract.LOGITS],
                chunks.num_chunks,
                chunks.total_chunks,
                out[contract.CHUNK_LOGITS],
                chunks.spans,
                explain=self.explain,
                probabilities=out[contract.PROBABILITIES],
                decisions=out[contract.DECISIONS],
                chunk_weights=out[contract.CHUNK_WEIGHTS],
            )
        return to_table(rows, self.explain)

    def _encode(self, chunked: dict[int, Any]) -> dict[int, np.ndarray]:
        """Windows of the same length share encoder calls across the batch's documents."""
        by_len: dict[int, list[int]] = {}
        for index, chunks in chunked.items():
            by_len.setdefault(chunks.seq_len, []).append(index)
        vectors = {}
        for indices in by_len.values():
            ids = np.concatenate([chunked[i].input_ids for i in indices])
            mask = np.concatenate([chunked[i].attention_mask for i in indices])
            out, offset = self.pipeline.encode(ids, mask), 0
            for i in indices:
                vectors[i] = out[offset : offset + chunked[i].num_chunks]
                offset += chunked[i].num_chunks
        return vectors


def load_pipeline(repository: str | Path, threads: int, num_gpus: float, max_batch: int = 64):
    """`OnnxPipeline` over the repository; on a GPU actor with onnxruntime's CUDA provider
    installed, its sessions are made again on the GPU."""
    import onnxruntime as ort

    from longdoc.contract import AGGREGATOR, ONNX_FILE
    from longdoc.runtime import OnnxPipeline, make_session

    pipeline = OnnxPipeline(repository, threads=threads or None, max_batch=max_batch)
    if num_gpus > 0 and "CUDAExecutionProvider" in ort.get_available_providers():
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        pipeline.encoder = make_session(pipeline.encoder_path, threads or None, providers)
        aggregator = Path(repository) / AGGREGATOR / "1" / ONNX_FILE
        pipeline.aggregator = make_session(aggregator, threads or None, providers)
    return pipeline


def identity_of_repository(repository: Path) -> tuple[dict, dict | None]:
    """The model of an exported repository (labels, canary logits, its export report's
    hash and what it says) and its chunking."""
    import hashlib
    import json

    from longdoc.contract import EXPORT_REPORT

    pipeline = load_pipeline(repository, threads=1, num_gpus=0)
    (result,) = pipeline.classify([CANARY])
    model: dict[str, Any] = {
        "labels": pipeline.labels,
        "canary_logits": [float(v) for v in result.logits],
        "repository": str(repository.resolve()),
    }
    report = repository / EXPORT_REPORT
    if report.is_file():
        data = report.read_bytes()
        meta = json.loads(data)
        model["export_report_sha256"] = hashlib.sha256(data).hexdigest()
        model.update({k: meta.get(k) for k in ("source", "head", "precision", "profile")})
    return model, pipeline.chunking.to_dict()
