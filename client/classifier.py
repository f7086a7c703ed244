"""A client for the `document_classifier` ensemble over gRPC or HTTP.

Async under the hood (tritonclient's aio clients: the sync HTTP client is not thread-safe),
with a concurrency limit, one deadline per document (``timeout_s``, every attempt included),
retries with exponential backoff only while the server did not run the request
(``transport.is_retryable``: unavailable, restarting, connection refused; never after the
client's own deadline), and errors reported per document: one bad document never fails the
batch.

Two ways in: ``classify(texts)`` (a whole list; ``aclassify`` in a running event loop), or
one document at a time in a session that holds the connection and the model's outputs::

    async with client.session(concurrency=8) as session:
        result = await session.classify_one("doc-1", text)   # a Classification
        alive = await session.ready()                         # the server's readiness

Each ``Classification`` carries ``labels`` (the decided label names: the server's
``DECISIONS``, every label over its threshold for a multi-label model, the top label for a
single-label one), ``label`` (the top label), ``probabilities`` (label -> p: softmax, or
each label's sigmoid for a multi-label model), and per window the logits, the weight in
each label's score (``CHUNK_WEIGHTS``) and the character span.

tritonclient and numpy only: ``longdoc[client]`` is enough to import and use it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from longdoc.client import transport

from longdoc import contract
from longdoc.decision import Decision
from longdoc.results import DocumentError, DocumentResult, best_chunk

MODEL = contract.ENSEMBLE
# Requested as raw tensors where the model has them (a repository exported before
# CHUNK_WEIGHTS/DECISIONS existed is still served: those answers fall back to the argmax);
# PROBABILITIES comes through the classification extension (label names).
RAW_OUTPUTS = (
    contract.LOGITS,
    contract.NUM_CHUNKS,
    contract.TOTAL_CHUNKS,
    contract.CHUNK_LOGITS,
    contract.CHUNK_SPANS,
    contract.CHUNK_WEIGHTS,
    contract.DECISIONS,
)


@dataclass
class Classification:
    """One document's answer (or its error)."""

    id: str
    label: str | None = None  # the top label (largest logit)
    labels: list[str] = field(default_factory=list)  # the decided labels (DECISIONS)
    probabilities: dict[str, float] = field(default_factory=dict)  # label -> p, all labels
    logits: np.ndarray | None = None  # [L], label order of `label_names`
    num_chunks: int = 0  # windows read
    total_chunks: int = 0  # windows in the document (more than read only under a --max-chunks cap)
    chunk_logits: np.ndarray | None = None  # [n_chunks, L]
    chunk_spans: np.ndarray | None = None  # [n_chunks, 2] character offsets
    chunk_weights: np.ndarray | None = None  # [n_chunks, L] each window's weight per label
    decisions: np.ndarray | None = None  # [L] bool, label order of `label_names`
    label_names: list[str] = field(default_factory=list)  # every served label, in order
    # the served model's problem, from its config (None where the model-config API did not
    # answer, e.g. restricted: then a document with other than one decided label says so)
    multi_label: bool | None = None
    error: str | None = None
    attempts: int = 0
    latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def top(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]

    @property
    def is_multi_label(self) -> bool:
        if self.multi_label is not None:
            return self.multi_label
        return len(self.labels) != 1 or self.labels[0] != self.label

    def best_chunk(self, label: str | None = None) -> int:
        """The decisive window for ``label`` (default: the top label): the one that weighs
        most in that label's score (``CHUNK_WEIGHTS``: the attention head's weight, the
        maximum's window for logits-max), ties broken by the window's own score
        (``longdoc.results.best_chunk``)."""
        index = self.label_names.index(self.label if label is None else label)
        return best_chunk(self.chunk_logits, self.chunk_weights, index)


class ServerUnavailable(RuntimeError):
    """The server could not be reached within the retry budget."""


def encode_text(text: str | bytes) -> bytes:
    """UTF-8 bytes of a document; a ``str`` that cannot be UTF-8 (a lone surrogate, e.g.
    from JSON's ``"\\ud800"``) raises ValueError naming the position."""
    if isinstance(text, bytes):
        return text
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"text is not valid Unicode: {exc.reason} {text[exc.start : exc.end]!r} at "
            f"character {exc.start} (cannot be encoded as UTF-8)"
        ) from None


class DocumentClassifierClient:
    """Classify documents with a running `document_classifier`.

    ``timeout_s`` is each document's deadline (all its attempts together). Failures where
    the server did not run the request (unavailable, restarting, queue full) are retried
    with jittered exponential backoff (``backoff_s`` doubling up to ``max_backoff_s``) for
    as long as the deadline allows; ``retries`` caps the number of retries (``None``: no
    cap, the deadline decides), so a restart or an overload burst that outlasts a fixed
    count on a slow machine does not lose documents;
    ``headers`` go with every call (e.g. ``{"admin-key": KEY}`` for a locked-down API).

    >>> client = DocumentClassifierClient("127.0.0.1:8001", protocol="grpc")
    >>> [r.label for r in client.classify(["a long contract ...", "an annual report ..."])]
    """

    def __init__(
        self,
        url: str,
        protocol: str = "grpc",
        model: str = MODEL,
        timeout_s: float = 120.0,
        retries: int | None = None,
        backoff_s: float = 0.5,
        max_backoff_s: float = 4.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.protocol = transport.check_protocol(protocol)
        self.url = transport.normalize_url(url)
        self.model = model
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 (got {timeout_s})")
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.headers = transport.wire_headers(headers, self.protocol)
        self._labels: list[str] | None = None

    # -- transport ---------------------------------------------------------------------
    def _module(self):
        return transport.aio_module(self.protocol)

    def _connect(self, concurrency: int = 8):
        return transport.aio_client(self.protocol, self.url, self.timeout_s, concurrency)

    async def _output_shapes(self, client) -> dict[str, list[int]]:
        """The model's outputs (name -> shape) from its metadata."""
        meta = await client.get_model_metadata(self.model, headers=self.headers)
        shapes = transport.output_shapes(transport.metadata_dict(meta))
        if contract.LOGITS not in shapes:
            raise RuntimeError(f"model {self.model} has no {contract.LOGITS} output")
        return shapes

    async def _served_decision(self, client) -> Decision | None:
        """The decision rule named in the model's config (``contract.PARAM_DECISION``: the
        problem and the thresholds behind DECISIONS); None where the config cannot be read
        (restricted API, an export without the parameter)."""
        import json

        try:
            ask = client.get_model_config(self.model, headers=self.headers)
            config = await asyncio.wait_for(ask, timeout=min(self.timeout_s, 30.0))
            if not isinstance(config, dict):
                from google.protobuf.json_format import MessageToDict

                config = MessageToDict(config, preserving_proto_field_name=True)
            config = config.get("config", config)
            value = config["parameters"][contract.PARAM_DECISION]["string_value"]
            return Decision.from_dict(json.loads(value))
        except Exception:
            return None

    def served_decision(self) -> Decision | None:
        """The served model's decision rule (``longdoc.decision.Decision``), read from its
        config; None where the model-config API is restricted or the export predates it."""

        async def ask() -> Decision | None:
            connection = self._connect(1)
            try:
                return await self._served_decision(connection)
            finally:
                await connection.close()

        return asyncio.run(ask())

    def _request(self, text: bytes, shapes: dict[str, list[int]]):
        module = self._module()
        return [transport.text_input(module, text)], transport.requested_outputs(
            module, shapes, RAW_OUTPUTS
        )

    async def _attempts(self, call, deadline: float, on_attempt=None, read_only: bool = False):
        """``call(remaining_s)`` until it succeeds, fails for good, or the deadline
        passes; retries (with jittered exponential backoff) only what
        ``transport.is_retryable`` allows, and never past the deadline."""
        attempt = 0
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise transport.DeadlineExceeded(
                    f"no answer within the client's deadline of {self.timeout_s:g} s"
                )
            if on_attempt:
                on_attempt(attempt + 1)
            try:
                return await call(remaining)
            except Exception as exc:
                capped = self.retries is not None and attempt >= self.retries
                if capped or not transport.is_retryable(exc, read_only):
                    raise
                step = min(self.max_backoff_s, self.backoff_s * 2 ** min(attempt, 30))
                delay = step * (0.5 + random.random())
                if time.perf_counter() + delay >= deadline:
                    raise  # no time left for another attempt: report this error
                await asyncio.sleep(delay)
                attempt += 1

    async def _infer_one(
        self, client, doc_id: str, text: bytes, shapes: dict, multi_label: bool | None = None
    ):
        result = Classification(id=doc_id, multi_label=multi_label)
        started = time.perf_counter()
        inputs, outputs = self._request(text, shapes)

        def count(n: int) -> None:
            result.attempts = n

        async def call(remaining: float):
            return await transport.infer(
                client, self.protocol, self.model, inputs, outputs, self.headers, remaining
            )

        try:
            _fill(result, await self._attempts(call, started + self.timeout_s, count))
        except Exception as exc:  # reported per document
            result.error = transport.error_text(exc)
        result.latency_s = time.perf_counter() - started
        return result

    # -- public API --------------------------------------------------------------------
    def session(self, concurrency: int = 8) -> ClientSession:
        """A connection for classifying documents one at a time (``ClientSession``), at
        most ``concurrency`` in flight; use it as ``async with client.session() as s``."""
        return ClientSession(self, concurrency)

    async def aclassify(
        self,
        texts: Sequence[str | bytes],
        ids: Sequence[str] | None = None,
        concurrency: int = 8,
        on_result: Callable[[Classification], None] | None = None,
    ) -> list[Classification]:
        ids = list(ids) if ids is not None else [str(i) for i in range(len(texts))]
        async with self.session(concurrency) as session:

            async def one(doc_id, text):
                result = await session.classify_one(doc_id, text)
                if on_result:
                    on_result(result)
                return result

            return list(await asyncio.gather(*(one(i, t) for i, t in zip(ids, texts))))

    def classify(
        self,
        texts: Sequence[str | bytes],
        ids: Sequence[str] | None = None,
        concurrency: int = 8,
        on_result: Callable[[Classification], None] | None = None,
    ) -> list[Classification]:
        """Classify ``texts``; each result carries its own error if it failed."""
        return asyncio.run(self.aclassify(texts, ids, concurrency, on_result))

    async def _with_retries(self, call):
        async def bounded(remaining: float):
            try:
                return await asyncio.wait_for(call(), timeout=remaining)
            except asyncio.TimeoutError:
                raise transport.DeadlineExceeded(
                    f"no answer within the client's deadline of {self.timeout_s:g} s"
                ) from None

        try:
            deadline = time.perf_counter() + self.timeout_s
            return await self._attempts(bounded, deadline, read_only=True)
        except Exception as exc:
            message = transport.error_text(exc)
            raise ServerUnavailable(f"{self.protocol}://{self.url}: {message}") from exc


class ClientSession:
    """One connection to the server, for documents sent one at a time (the batch engine,
    an application's own loop); ``DocumentClassifierClient.session`` makes one.

    ``open()`` (or ``async with``) connects and reads the model's outputs, retried until the
    client's deadline, else ``ServerUnavailable``; ``classify_one`` opens it when needed.
    ``classify_one(doc_id, text)`` returns the document's ``Classification`` with the
    client's retry rule and deadline; its failures are in ``error``, never raised (only
    ``ServerUnavailable`` when the model's metadata cannot be read). At most
    ``concurrency`` documents are in flight; ``ready()`` asks whether the server is ready
    (False for any failure). ``close()`` ends the connection (the session can be opened
    again)."""

    def __init__(self, client: DocumentClassifierClient, concurrency: int = 8) -> None:
        self.client = client
        self.concurrency = max(1, concurrency)
        self._connection = None
        self._shapes: dict[str, list[int]] | None = None
        self._multi_label: bool | None = None
        self._gate = asyncio.Semaphore(self.concurrency)
        self._opening = asyncio.Lock()  # documents arriving together read the metadata once

    def _connected(self):
        if self._connection is None:
            self._connection = self.client._connect(self.concurrency)
        return self._connection

    async def open(self) -> ClientSession:
        connection = self._connected()
        async with self._opening:
            if self._shapes is None:
                client = self.client
                shapes = await client._with_retries(lambda: client._output_shapes(connection))
                decision = await client._served_decision(connection)
                self._multi_label = None if decision is None else decision.multi_label
                self._shapes = shapes
        return self

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()

    async def __aenter__(self) -> ClientSession:
        try:
            return await self.open()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def classify_one(self, doc_id: str, text: str | bytes) -> Classification:
        """One document's answer (or its error)."""
        try:
            data = encode_text(text)
        except ValueError as exc:  # this document fails, nothing is sent
            return Classification(id=doc_id, error=str(exc))
        await self.open()
        async with self._gate:
            return await self.client._infer_one(
                self._connected(), doc_id, data, self._shapes, self._multi_label
            )

    async def ready(self, timeout_s: float = 3.0) -> bool:
        """Whether the server says it is ready within ``timeout_s`` (False on any error)."""
        try:
            connection = self._connected()
            ready = connection.is_server_ready(headers=self.client.headers)
            return bool(await asyncio.wait_for(ready, timeout_s))
        except Exception:  # refused, reset, timed out: all mean not ready
            return False


class ServerClassifier:
    """A running server as the classifier interface (``longdoc.results.Classifier``):
    ``classify(texts)`` returns ``DocumentResult``s, as the in-process implementations do,
    and raises ``DocumentError`` for the first document the server refused. The client's
    own ``Classification`` (ids, attempts, latency, an error per document) stays the
    client library's answer; this adapter is for code that takes any classifier."""

    def __init__(self, url: str, concurrency: int = 8, **client_options) -> None:
        self.client = DocumentClassifierClient(url, **client_options)
        self.concurrency = concurrency
        self._labels: list[str] | None = None
        self._decision: Decision | None = None

    @property
    def decision(self) -> Decision | None:
        """The served decision rule (problem, thresholds), from the model's config; None
        where it cannot be read (then each answer's DECISIONS still decides)."""
        if self._decision is None:
            self._decision = self.client.served_decision()
        return self._decision

    @property
    def labels(self) -> list[str]:
        """The served labels (the server names them in every answer: the first call asks
        with a one-word document when nothing was classified yet)."""
        if self._labels is None:
            self.classify(["labels"])
        return list(self._labels or [])

    def classify(self, texts: Sequence[str]) -> list[DocumentResult]:
        answers = self.client.classify(list(texts), concurrency=self.concurrency)
        results = []
        for index, answer in enumerate(answers):
            if not answer.ok:
                raise DocumentError(index, f"the server refused it: {answer.error}")
            self._labels = self._labels or answer.label_names
            results.append(to_result(answer))
        return results


def to_result(answer: Classification) -> DocumentResult:
    """A successful ``Classification`` as the interface's ``DocumentResult``."""
    probabilities = np.asarray([answer.probabilities[label] for label in answer.label_names])
    return DocumentResult(
        logits=np.asarray(answer.logits, dtype=np.float32),
        probabilities=probabilities.astype(np.float32),
        chunk_logits=np.asarray(answer.chunk_logits, dtype=np.float32),
        spans=np.asarray(answer.chunk_spans, dtype=np.int64),
        total_chunks=answer.total_chunks,
        chunk_weights=answer.chunk_weights,
        decisions=answer.decisions,
    )


def _fill(result: Classification, response) -> None:
    logits = response.as_numpy(contract.LOGITS)
    entries = [
        e.decode() if isinstance(e, bytes) else str(e)
        for e in response.as_numpy(contract.PROBABILITIES).reshape(-1)
    ]
    labels = [""] * len(logits)
    probabilities: dict[str, float] = {}
    for entry in entries:
        value, index, *name = entry.split(":", 2)
        label = name[0] if name else index
        labels[int(index)] = label
        probabilities[label] = float(value)
    result.logits = logits
    result.label_names = labels
    result.probabilities = probabilities
    result.label = labels[int(np.argmax(logits))]
    result.num_chunks = int(response.as_numpy(contract.NUM_CHUNKS).reshape(-1)[0])
    result.total_chunks = int(response.as_numpy(contract.TOTAL_CHUNKS).reshape(-1)[0])
    result.chunk_logits = response.as_numpy(contract.CHUNK_LOGITS)
    result.chunk_spans = response.as_numpy(contract.CHUNK_SPANS)
    result.chunk_weights = response.as_numpy(contract.CHUNK_WEIGHTS)  # None: not served
    decisions = response.as_numpy(contract.DECISIONS)
    if decisions is None:  # a repository exported before DECISIONS: the argmax decides
        decisions = np.arange(len(labels)) == int(np.argmax(logits))
    result.decisions = np.asarray(decisions, dtype=bool).reshape(-1)
    result.labels = [labels[int(i)] for i in np.flatnonzero(result.decisions)]
