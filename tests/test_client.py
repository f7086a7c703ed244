"""The client library and `longdoc classify`: headers, per-document errors, the retry rule.

Regression tests for issue #10's client defects, against real tritonclient and a real
`longdoc serve` (the tiny preset, with inference, metadata and statistics behind the key):

* `--header NAME:VALUE` reaches the server over gRPC and HTTP (classify and bench);
* a JSON Lines text holding a lone surrogate fails as that document, the others are
  classified (it used to crash the whole run with UnicodeEncodeError);
* the client never retries after its own deadline (it used to retry its timeouts as if the
  request had never run: up to 5 x 120 s per document), retries what the server did not
  run, and keeps every document within one deadline, retries included.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
from longdoc.client import transport
from longdoc.client.classifier import DocumentClassifierClient, ServerUnavailable
from tritonclient.utils import InferenceServerException

from longdoc import contract, corpus

# --------------------------------------------------------------------------- units


class FakeResponse:
    """A tritonclient response: ``as_numpy(name)``, None for an output not in it."""

    def __init__(self, outputs: dict) -> None:
        self.outputs = outputs

    def as_numpy(self, name):
        return self.outputs.get(name)


def _response(probabilities, logits, decisions=None, weights=None):
    import numpy as np

    names = ["a", "b", "c"]
    entries = sorted(((p, i) for i, p in enumerate(probabilities)), reverse=True)
    outputs = {
        contract.LOGITS: np.asarray(logits, dtype=np.float32),
        contract.PROBABILITIES: np.array(
            [f"{p:f}:{i}:{names[i]}".encode() for p, i in entries], dtype=object
        ),
        contract.NUM_CHUNKS: np.array([2], dtype=np.int32),
        contract.TOTAL_CHUNKS: np.array([2], dtype=np.int32),
        # window 0 scores highest for every label; window 1 weighs most where weights say
        contract.CHUNK_LOGITS: np.array([[5.0, 5.0, 5.0], [1.0, 1.0, 1.0]], dtype=np.float32),
        contract.CHUNK_SPANS: np.array([[0, 4], [5, 9]], dtype=np.int64),
    }
    if decisions is not None:
        outputs[contract.DECISIONS] = np.asarray(decisions, dtype=bool)
    if weights is not None:
        outputs[contract.CHUNK_WEIGHTS] = np.asarray(weights, dtype=np.float32)
    return FakeResponse(outputs)


def test_answers_give_decided_labels_and_the_heaviest_window():
    from longdoc.client import cli
    from longdoc.client.classifier import Classification, _fill

    # multi-label: two labels decided, neither the only one; the weights pick window 1
    weights = [[0.5, 0.1, 0.5], [0.5, 0.9, 0.5]]
    multi = Classification(id="m", multi_label=True)
    _fill(multi, _response([0.7, 0.9, 0.2], [0.8, 2.2, -1.4], [True, True, False], weights))
    assert multi.label == "b" and multi.labels == ["a", "b"]
    assert multi.label_names == ["a", "b", "c"] and multi.probabilities["c"] == 0.2
    assert multi.best_chunk("b") == 1  # largest weight, though window 0 scores higher
    assert multi.best_chunk("a") == 0  # equal weights: the window's own score decides
    record = cli.to_record(multi, "abcd efgh", None, explain=True)
    assert record["labels"] == ["a", "b"] and record["label"] == "b"
    assert [(e["label"], e["chunk"], e["passage"]) for e in record["explain"]] == [
        ("a", 0, "abcd"),
        ("b", 1, "efgh"),
    ]
    assert record["explain"][1]["weight"] == pytest.approx(0.9)
    # none decided: an empty list, and nothing to explain
    none = Classification(id="n", multi_label=True)
    _fill(none, _response([0.1, 0.2, 0.3], [-2.0, -1.4, -0.8], [False, False, False], weights))
    record = cli.to_record(none, "abcd efgh", None, explain=True)
    assert record["labels"] == [] and record["explain"] == [] and record["label"] == "c"
    # single-label from a server exported before DECISIONS/CHUNK_WEIGHTS: the argmax, and
    # the explain object as before (plus its label)
    old = Classification(id="s")
    _fill(old, _response([0.2, 0.7, 0.1], [0.1, 1.3, -0.6]))
    assert old.labels == ["b"] and old.chunk_weights is None and not old.is_multi_label
    record = cli.to_record(old, b"abcd efgh", 2, explain=True)
    assert record["labels"] == ["b"] and list(record["probabilities"]) == ["b", "a"]
    assert record["explain"] == {
        "chunk": 0,
        "span": [0, 4],
        "score": 5.0,
        "passage": "abcd",
        "label": "b",
    }


def test_parse_header():
    assert transport.parse_header("admin-key:abc=def") == ("admin-key", "abc=def")
    assert transport.parse_header("X-Trace : 1 2 ") == ("X-Trace", "1 2")
    assert transport.parse_header("empty:") == ("empty", "")
    for bad in ("novalue", ":v", "bad name:v", "x:a\nb"):
        with pytest.raises(Exception, match="NAME:VALUE|line break"):
            transport.parse_header(bad)


def test_wire_headers():
    headers = {"admin-key": "k", "X-Trace": "1"}
    assert transport.wire_headers(headers, "http") == headers
    # gRPC: lower-case metadata keys, and Triton's name for the admin key
    assert transport.wire_headers(headers, "grpc") == {
        contract.GRPC_ADMIN_HEADER: "k",
        "x-trace": "1",
    }
    assert transport.wire_headers(None, "grpc") == {}


@pytest.mark.parametrize(
    "exc, retry",
    [
        (InferenceServerException("Exceeds maximum queue size", "StatusCode.UNAVAILABLE"), True),
        (
            InferenceServerException(
                "failed to connect to all addresses", "StatusCode.UNAVAILABLE"
            ),
            True,
        ),
        (InferenceServerException("Service Unavailable", "503"), True),
        (InferenceServerException("Bad Gateway", "502"), True),
        (InferenceServerException("Gateway Timeout", "504"), True),
        (
            InferenceServerException(
                "Request for unknown model: 'document_classifier' has no available versions",
                "StatusCode.NOT_FOUND",
            ),
            True,
        ),
        (InferenceServerException("Stub process 'encoder_0_0' is not healthy.", "500"), True),
        (
            InferenceServerException(  # the encoder's refusal, as an ensemble reports it
                "in ensemble 'document_classifier', Model encoder - Error when running inference: "
                "[request id: <id_unknown>] Exceeds maximum queue size",
                "StatusCode.INTERNAL",
            ),
            True,
        ),
        (InferenceServerException("[request id: 1] Request timeout expired", "500"), True),
        (
            InferenceServerException(
                "in ensemble 'document_classifier', Model encoder - Error "
                "when running inference: Server not ready",
                "500",
            ),
            True,
        ),
        (ConnectionRefusedError(111, "Connection refused"), True),
        # the client's own deadline, and every answer the server did give: never retried
        (InferenceServerException("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED"), False),
        (InferenceServerException("Locally cancelled", "StatusCode.CANCELLED"), False),
        (transport.DeadlineExceeded("no answer within 1 s"), False),
        (asyncio.TimeoutError(), False),
        (TimeoutError("timed out"), False),
        (InferenceServerException("text is empty", "StatusCode.INVALID_ARGUMENT"), False),
        (InferenceServerException("text is empty", "400"), False),
        (InferenceServerException("internal error", "StatusCode.INTERNAL"), False),
        (OSError("some other I/O error"), False),
    ],
)
def test_retry_rule(exc, retry):
    assert transport.is_retryable(exc) is retry


def test_read_only_calls_retry_any_connection_failure():
    """Metadata and health calls cost the server nothing: a reset connection (a server
    restarting) is retried there, but not for an inference, which may have run."""
    reset = ConnectionResetError(104, "Connection reset by peer")
    assert not transport.is_retryable(reset)
    assert transport.is_retryable(reset, read_only=True)
    assert not transport.is_retryable(TimeoutError(), read_only=True)  # still never
    answer = InferenceServerException("unknown model", "StatusCode.NOT_FOUND")
    assert not transport.is_retryable(answer, read_only=True)


def test_error_text():
    exc = InferenceServerException("model not ready", "StatusCode.UNAVAILABLE", "debug")
    assert transport.error_text(exc) == "model not ready"
    page = (
        "an exception occurred in the client while decoding the response: x\nresponse: "
        "<html><head><title>413 Request Entity Too Large</title></head></html>"
    )
    assert transport.error_text(InferenceServerException(page, "413")) == (
        "HTTP 413 Request Entity Too Large (from a proxy in front of the server)"
    )
    assert transport.error_text(asyncio.TimeoutError()) == "timed out"


def test_refused_connection_retried_within_one_deadline():
    """Nothing listens: connection refused is retried, but never past the deadline (with
    20 retries from 0.2 s the old per-attempt rule would take hours)."""
    from longdoc.server.probe import free_port

    client = DocumentClassifierClient(
        f"127.0.0.1:{free_port()}", "grpc", timeout_s=1.5, retries=20, backoff_s=0.2
    )
    started = time.perf_counter()
    with pytest.raises(ServerUnavailable, match="127.0.0.1"):
        client.classify(["a contract"])
    assert time.perf_counter() - started < 4


def test_retries_last_as_long_as_the_deadline_allows():
    """With no retry cap (the default), what the server did not run is retried until the
    document's deadline, not until a fixed count runs out (4 retries from 10 ms would give
    up after ~0.15 s: a restart or an overload burst on a slow machine lost documents)."""
    from longdoc.server.probe import free_port

    client = DocumentClassifierClient(
        f"127.0.0.1:{free_port()}", "grpc", timeout_s=1.5, backoff_s=0.01, max_backoff_s=0.05
    )
    assert client.retries is None
    started = time.perf_counter()
    with pytest.raises(ServerUnavailable, match="127.0.0.1"):
        client.classify(["a contract"])
    assert 1.0 < time.perf_counter() - started < 4


class BlackHole:
    """A TCP server that accepts, reads and never answers: a server that hangs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests = 0
        self._stop = False
        self._held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            self._held.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        while not self._stop:
            try:
                data = conn.recv(65536)
            except OSError:
                continue
            if not data:
                return
            self.requests += data.count(b"HTTP/1.1\r\n")

    def close(self) -> None:
        self._stop = True
        for conn in self._held:
            conn.close()
        self.sock.close()


def test_own_deadline_is_never_retried_http():
    """A server that takes the request and never answers: one request, then the client's
    deadline, no second try (the old client sent it 5 times, 120 s each)."""
    hole = BlackHole()
    try:
        client = DocumentClassifierClient(
            f"127.0.0.1:{hole.port}", "http", timeout_s=1.0, retries=4, backoff_s=0.05
        )
        started = time.perf_counter()
        with pytest.raises(ServerUnavailable, match="deadline of 1 s"):
            client.classify(["a contract"])
        elapsed = time.perf_counter() - started
        time.sleep(0.3)
        assert 0.9 < elapsed < 3
        assert hole.requests == 1 and hole.connections == 1
    finally:
        hole.close()


# --------------------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def locked(export_repo, serve):
    """The tiny preset with inference, metadata and statistics behind the admin key."""
    repo, _ = export_repo(preset="tiny")
    return repo, serve(repo, "--restrict-api", "inference,metadata,statistics")


def _jsonl(path, records) -> str:
    # json.dumps writes a lone surrogate as the escape "\ud800", as other tools do
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_classify_sends_headers(locked, tmp_path, capsys, protocol):
    from longdoc.cli import main

    _, served = locked
    doc = tmp_path / "doc.txt"
    doc.write_text(corpus.document(300, seed=1))
    base = [
        "classify",
        str(doc),
        "--protocol",
        protocol,
        "--url",
        served.url(protocol),
        "--retries",
        "0",
        "--no-progress",
    ]
    assert main(base) == 3  # metadata is locked: without the key, nothing is sent
    assert "server unavailable" in capsys.readouterr().err
    code = main([*base, "--header", f"admin-key:{served.admin_key}", "--header", "x-extra:1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert record["id"] == str(doc) and record["label"] and record["num_chunks"] >= 1
    assert record["total_chunks"] == record["num_chunks"]
    code = main([*base, "--header", "admin-key:wrong-key-0123456789"])
    assert code == 3


def test_lone_surrogate_fails_alone(locked, tmp_path, capsys):
    from longdoc.cli import main

    _, served = locked
    good = corpus.document(200, seed=2)
    path = _jsonl(
        tmp_path / "docs.jsonl",
        [
            {"id": "first", "text": good},
            {"id": "surrogate", "text": "a text with a lone surrogate \ud800 in it"},
            {"id": "odd-id-\udc00", "text": good[:500]},
            {"id": "last", "text": good[::-1]},
        ],
    )
    code = main(
        [
            "classify",
            path,
            "--url",
            served.grpc_url,
            "--no-progress",
            "--header",
            f"admin-key:{served.admin_key}",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in records] == ["first", "surrogate", "odd-id-\udc00", "last"]
    bad = records[1]
    assert "label" not in bad and "not valid Unicode" in bad["error"] and "29" in bad["error"]
    assert all(r.get("label") and "error" not in r for r in records[:1] + records[2:])
    assert "1 of 4 documents failed" in err


def _ensemble_requests(served, model: str = contract.ENSEMBLE) -> int:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(served.http_url)
    stats = client.get_inference_statistics(
        model, headers={contract.ADMIN_HEADER: served.admin_key}
    )
    s = stats["model_stats"][0]["inference_stats"]
    return int(s["success"]["count"]) + int(s["fail"]["count"])


def _settled_ensemble_requests(served, quiet_s: float = 1.0, limit_s: float = 30.0) -> int:
    """Documents the server received, once the count has not changed for ``quiet_s``.

    Counted at the chunker, the ensemble's first step, which every request enters exactly
    once: the ensemble's own statistics count a request cancelled at the client's deadline
    twice (Triton 2.51, with the dispatcher answering CANCELLED)."""

    def count() -> int:
        return _ensemble_requests(served, contract.CHUNKER)

    last, since, started = count(), time.monotonic(), time.monotonic()
    while time.monotonic() - since < quiet_s and time.monotonic() - started < limit_s:
        time.sleep(0.2)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
    return last


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_deadline_not_retried_on_a_real_server(locked, protocol):
    """A document slower than the deadline: one attempt, its deadline error, and the
    server saw it once."""
    _, served = locked
    text = corpus.document(corpus.max_tokens_for(60), seed=5)
    headers = {contract.ADMIN_HEADER: served.admin_key}
    ok = DocumentClassifierClient(served.url(protocol), protocol, headers=headers, retries=0)
    (first,) = ok.classify([text])
    (warm,) = ok.classify([text])  # the first call may include warm-up: time a warm one
    assert first.ok and warm.ok, (first.error, warm.error)
    deadline = min(first.latency_s, warm.latency_s) / 8

    async def once():
        client = DocumentClassifierClient(
            served.url(protocol),
            protocol,
            headers=headers,
            timeout_s=60.0,
            retries=4,
            backoff_s=0.01,
        )
        # the session reads the metadata first; the short deadline applies to the document
        async with client.session() as session:
            client.timeout_s = deadline
            return await session.classify_one("slow", text)

    before = _settled_ensemble_requests(served)
    result = asyncio.run(once())
    assert not result.ok and "deadline" in result.error, result.error
    assert result.attempts == 1
    assert result.latency_s < deadline + 1.0
    time.sleep(first.latency_s * 3 + 0.5)  # what the server does with it, it has done
    assert _settled_ensemble_requests(served) - before <= 1


def test_bench_sends_headers(locked, tmp_path, capsys):
    """The bench reads statistics and metadata and infers with the key."""
    from longdoc.cli import main

    repo, served = locked
    quick = [
        "--warmup-s",
        "0.2",
        "--window-s",
        "0.5",
        "--max-point-s",
        "2",
        "--min-window-docs",
        "1",
        "--no-progress",
        "--docs",
        "2",
        "--concurrency",
        "1",
    ]
    assert main(["bench", "--url", served.grpc_url, "--repository", str(repo), *quick]) == 1
    assert "longdoc bench: error" in capsys.readouterr().err
    out = tmp_path / "b"
    code = main(
        [
            "bench",
            "--url",
            served.grpc_url,
            "--repository",
            str(repo),
            *quick,
            "--header",
            f"admin-key:{served.admin_key}",
            "--output",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err[-2000:]
    result = json.loads((out / "results.json").read_text())
    (point,) = result["points"]
    assert point["docs"] > 0 and point["server"][contract.ENCODER]["requests"] > 0
    # the key is not written into the results
    assert served.admin_key not in (out / "results.json").read_text()
    assert result["config"]["headers"] == {"admin-key": "(not recorded)"}
