"""A client for the `document_classifier` ensemble over gRPC or HTTP.

Async under the hood (tritonclient's aio clients: the sync HTTP client is not thread-safe),
with a concurrency limit, a timeout per attempt, retries with exponential backoff while the
server is unavailable (restarting, overloaded), and errors reported per document: one bad
document never fails the batch.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

MODEL = "document_classifier"
RAW_OUTPUTS = ("LOGITS", "NUM_CHUNKS", "CHUNK_LOGITS", "CHUNK_SPANS")


@dataclass
class Classification:
    """One document's answer (or its error)."""

    id: str
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)  # label -> p, all labels
    logits: np.ndarray | None = None  # [L], label order of `labels`
    num_chunks: int = 0
    chunk_logits: np.ndarray | None = None  # [n_chunks, L]
    chunk_spans: np.ndarray | None = None  # [n_chunks, 2] character offsets
    labels: list[str] = field(default_factory=list)
    error: str | None = None
    attempts: int = 0
    latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def top(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]

    def best_chunk(self) -> int:
        """The window whose score for the predicted label is highest."""
        label_index = self.labels.index(self.label)
        return int(np.argmax(self.chunk_logits[:, label_index]))


class ServerUnavailable(RuntimeError):
    """The server could not be reached within the retry budget."""


def _is_retryable(exc: BaseException) -> bool:
    """Connection-level failures and 'unavailable' statuses: the request never ran."""
    if isinstance(exc, (ConnectionError, OSError, asyncio.TimeoutError)):
        return True
    text = f"{type(exc).__name__} {exc}".lower()
    status = str(getattr(exc, "status", lambda: "")() or "").lower()
    # "no available versions": the model is unloading or loading, i.e. a server restart.
    markers = ("unavailable", "connect", "503", "502", "failed to establish", "reset by peer",
               "broken pipe", "server disconnected", "deadline", "no available versions",
               "not healthy")  # fmt: skip
    return any(m in status or m in text for m in markers)


class DocumentClassifierClient:
    """Classify documents with a running `document_classifier`.

    >>> client = DocumentClassifierClient("127.0.0.1:8001", protocol="grpc")
    >>> [r.label for r in client.classify(["a long contract ...", "an annual report ..."])]
    """

    def __init__(
        self,
        url: str,
        protocol: str = "grpc",
        model: str = MODEL,
        timeout_s: float = 120.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        headers: dict[str, str] | None = None,
    ) -> None:
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http' (got {protocol!r})")
        self.url = url.removeprefix("http://").removeprefix("grpc://")
        self.protocol = protocol
        self.model = model
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.headers = headers or {}
        self._labels: list[str] | None = None

    # -- transport ---------------------------------------------------------------------
    def _module(self):
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as module
        else:
            import tritonclient.http.aio as module
        return module

    def _connect(self):
        return self._module().InferenceServerClient(self.url)

    async def _num_labels(self, client) -> int:
        meta = await client.get_model_metadata(self.model, headers=self.headers)
        outputs = meta["outputs"] if isinstance(meta, dict) else _grpc_dict(meta)["outputs"]
        for output in outputs:
            if output["name"] == "LOGITS":
                return int(output["shape"][-1])
        raise RuntimeError(f"model {self.model} has no LOGITS output")

    def _request(self, text: bytes, num_labels: int):
        module = self._module()
        tensor = module.InferInput("TEXT", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([text], dtype=object))
        outputs = [module.InferRequestedOutput(name) for name in RAW_OUTPUTS]
        # Triton's classification extension returns "p:index:label": the label names.
        outputs.append(module.InferRequestedOutput("PROBABILITIES", class_count=num_labels))
        return [tensor], outputs

    async def _infer_one(self, client, doc_id: str, text: bytes, num_labels: int):
        result = Classification(id=doc_id)
        started = time.perf_counter()
        inputs, outputs = self._request(text, num_labels)
        for attempt in range(self.retries + 1):
            result.attempts = attempt + 1
            try:
                response = await asyncio.wait_for(
                    client.infer(self.model, inputs, outputs=outputs, headers=self.headers),
                    timeout=self.timeout_s,
                )
                _fill(result, response)
                break
            except Exception as exc:  # noqa: BLE001 - reported per document
                if attempt < self.retries and _is_retryable(exc):
                    delay = self.backoff_s * (2**attempt) * (0.5 + random.random())
                    await asyncio.sleep(delay)
                    continue
                result.error = _message(exc)
                break
        result.latency_s = time.perf_counter() - started
        return result

    # -- public API --------------------------------------------------------------------
    async def aclassify(
        self,
        texts: Sequence[str | bytes],
        ids: Sequence[str] | None = None,
        concurrency: int = 8,
        on_result: Callable[[Classification], None] | None = None,
    ) -> list[Classification]:
        ids = list(ids) if ids is not None else [str(i) for i in range(len(texts))]
        client = self._connect()
        try:
            num_labels = await self._with_retries(lambda: self._num_labels(client))
            gate = asyncio.Semaphore(max(1, concurrency))

            async def one(doc_id, text):
                data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
                async with gate:
                    result = await self._infer_one(client, doc_id, data, num_labels)
                if on_result:
                    on_result(result)
                return result

            return list(await asyncio.gather(*(one(i, t) for i, t in zip(ids, texts))))
        finally:
            await client.close()

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
        for attempt in range(self.retries + 1):
            try:
                return await asyncio.wait_for(call(), timeout=self.timeout_s)
            except Exception as exc:  # noqa: BLE001
                if attempt < self.retries and _is_retryable(exc):
                    await asyncio.sleep(self.backoff_s * (2**attempt))
                    continue
                raise ServerUnavailable(f"{self.protocol}://{self.url}: {_message(exc)}") from exc


def _grpc_dict(message) -> dict:
    from google.protobuf.json_format import MessageToDict

    data = MessageToDict(message, preserving_proto_field_name=True)
    for output in data.get("outputs", []):
        output["shape"] = [int(s) for s in output.get("shape", [])]
    return data


def _message(exc: BaseException) -> str:
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    text = (text or type(exc).__name__).strip()
    # A proxy in front of Triton (ingress, nginx) answers with an HTML page, which
    # tritonclient.http reports as a JSON parse error; say what the page says instead.
    title = re.search(r"<title>\s*([^<]{1,200}?)\s*</title>", text, re.IGNORECASE)
    if title and "decoding the response" in text:
        return f"HTTP {title.group(1)} (from a proxy in front of the server)"
    return text


def _fill(result: Classification, response) -> None:
    logits = response.as_numpy("LOGITS")
    entries = [e.decode() if isinstance(e, bytes) else str(e) for e in response.as_numpy(
        "PROBABILITIES").reshape(-1)]  # fmt: skip
    labels = [""] * len(logits)
    probabilities: dict[str, float] = {}
    for entry in entries:
        value, index, *name = entry.split(":", 2)
        label = name[0] if name else index
        labels[int(index)] = label
        probabilities[label] = float(value)
    result.logits = logits
    result.labels = labels
    result.probabilities = probabilities
    result.label = labels[int(np.argmax(logits))]
    result.num_chunks = int(response.as_numpy("NUM_CHUNKS").reshape(-1)[0])
    result.chunk_logits = response.as_numpy("CHUNK_LOGITS")
    result.chunk_spans = response.as_numpy("CHUNK_SPANS")
