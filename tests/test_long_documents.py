"""Documents of any length (issue #11): every window read, through a real tritonserver.

The dispatcher step sends a document's windows to the encoder in slices of at most its
``max_batch_size`` (BLS); these tests check, against the PyTorch reference, that documents
of 65, 300 and 2,000+ windows come back with the logits of all their windows, for every
head (the transformer head past its ``max_positions``), that the encoder never saw a batch
above its ``max_batch_size``, that a long document and many short ones sent together all
get their own answers, and that the caps are opt-in. The ``tiny`` preset (real tokenizer,
seeded weights) keeps the encoder cheap on 2 cores; the "done when" check runs the real
MiniLM weights on a 150,000-token document (slow).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from longdoc.client.classifier import DocumentClassifierClient
from longdoc.export.parity import TOLERANCES

from longdoc import contract, corpus
from longdoc.checkpoint import load_preset
from longdoc.chunking import ChunkingConfig, ChunkingError, chunk_text
from longdoc.reference import classify as reference

HEADS = contract.HEADS
ATOL = TOLERANCES["fp32"]
MAX_BATCH_SIZE = 64  # the encoder's default


def windows_for(tokens: int) -> int:
    cfg = ChunkingConfig()
    body, stride = cfg.body_length, cfg.body_length - cfg.overlap
    return 1 if tokens <= body else 1 + math.ceil((tokens - body) / stride)


def real_document(tokenizer, windows: int, seed: int) -> str:
    """Real text (stdlib docstrings) of at least ``windows`` windows of 512 tokens."""
    tokens = 510 + 382 * (windows - 1) - 200
    count = lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)  # noqa: E731
    return corpus.document(tokens, seed=seed, count_tokens=count)


def num_windows(tokenizer, text: str) -> int:
    return windows_for(len(tokenizer.encode(text, add_special_tokens=False).ids))


@pytest.fixture(scope="module")
def long_docs(tokenizer) -> dict[int, str]:
    docs = {65: real_document(tokenizer, 65, seed=11), 300: real_document(tokenizer, 300, 12)}
    for want, text in docs.items():
        assert want <= num_windows(tokenizer, text) <= want + 3
    return docs


@pytest.fixture(scope="module")
def short_docs(tokenizer) -> list[str]:
    count = lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)  # noqa: E731
    return [
        corpus.document(100 + 350 * (i % 4), seed=40 + i, count_tokens=count) for i in range(24)
    ]


# --------------------------------------------------------------------------- no server


def test_every_window_is_read_by_default(tokenizer, long_docs):
    text = long_docs[300]
    chunks = chunk_text(text, tokenizer, ChunkingConfig())
    assert chunks.num_chunks == chunks.total_chunks == num_windows(tokenizer, text) >= 300
    assert not chunks.truncated


def test_caps_are_opt_in_and_say_what_was_read(tokenizer, long_docs):
    text = long_docs[65]
    total = num_windows(tokenizer, text)
    for policy in ("head", "head_tail"):
        chunks = chunk_text(text, tokenizer, ChunkingConfig(max_chunks=8, overflow=policy))
        assert (chunks.num_chunks, chunks.total_chunks, chunks.truncated) == (8, total, True)
    with pytest.raises(ChunkingError, match=f"needs {total} chunks but max_chunks is 8"):
        chunk_text(text, tokenizer, ChunkingConfig(max_chunks=8))


def test_max_windows_error_names_the_limit_and_the_document_size(tokenizer, long_docs):
    text = long_docs[65]
    total = num_windows(tokenizer, text)
    tokens = len(tokenizer.encode(text, add_special_tokens=False).ids)
    with pytest.raises(ChunkingError) as info:
        chunk_text(text, tokenizer, ChunkingConfig(max_windows=50))
    message = str(info.value)
    assert f"{total} windows ({tokens} tokens)" in message
    assert "max_windows safety limit of 50" in message
    assert ChunkingConfig().max_windows >= 10_000  # large by default


# --------------------------------------------------------------------------- served


def encoder_statistics(url: str) -> dict:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        return client.get_inference_statistics(contract.ENCODER)["model_stats"][0]
    finally:
        client.close()


def batch_sizes(stats: dict) -> dict[int, int]:
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}


@pytest.fixture(scope="module")
def tiny_server(export_repo, serve):
    """``get(head, **chunking) -> (served, reference model)``: one server at a time (each
    holds a handful of Python stubs), the reference from the same seeded preset."""
    current: dict = {}

    def get(head: str, **chunking):
        key = (head, tuple(sorted(chunking.items())))
        if current.get("key") != key:
            if "served" in current:
                current["served"].stop()
            repo, _ = export_repo(preset="tiny", head=head, **chunking)
            current.update(key=key, served=serve(repo))
            current["model"] = load_preset("tiny", head, num_labels=3)
            current["model"].chunking = ChunkingConfig.from_dict(
                {**current["model"].chunking.to_dict(), **chunking}
            )
        return current["served"], current["model"]

    yield get
    if "served" in current:
        current["served"].stop()


def assert_same(got, exp, head: str) -> None:
    assert got.ok, got.error
    assert got.num_chunks == exp.num_chunks
    np.testing.assert_allclose(got.logits, exp.logits, atol=ATOL)
    np.testing.assert_allclose(got.chunk_logits, exp.chunk_logits, atol=ATOL)
    np.testing.assert_array_equal(got.chunk_spans, exp.spans)
    np.testing.assert_allclose(got.chunk_weights, exp.chunk_weights, atol=ATOL)
    # the document's logits are the weighted sum of its windows' logits (CHUNK_WEIGHTS: 1/n
    # for the mean heads, the maximum's window for logits-max, attention for attention)
    pooled = (got.chunk_weights * got.chunk_logits).sum(axis=0)
    np.testing.assert_allclose(pooled, got.logits, atol=1e-5)
    if head != "attention":
        reduce = np.max if head == "logits-max" else np.mean
        np.testing.assert_allclose(reduce(got.chunk_logits, axis=0), got.logits, atol=1e-5)


def raw_infer(
    url: str, text: str, outputs=(contract.LOGITS, contract.NUM_CHUNKS, contract.TOTAL_CHUNKS)
):
    """Plain tritonclient, no longdoc client: what a user writes."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        tensor = grpcclient.InferInput(contract.TEXT, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([text.encode()], dtype=object))
        wanted = [grpcclient.InferRequestedOutput(name) for name in outputs]
        result = client.infer(contract.ENSEMBLE, [tensor], outputs=wanted, client_timeout=1800)
        return {name: result.as_numpy(name) for name in outputs}
    finally:
        client.close()


@pytest.mark.parametrize("head", HEADS)
def test_long_documents_equal_reference_for_every_head(tiny_server, long_docs, head):
    served, model = tiny_server(head)
    texts = [long_docs[65], long_docs[300]]
    expected = reference(model, texts)
    assert [e.num_chunks for e in expected][0] > MAX_BATCH_SIZE
    if head == "transformer":  # past the positions it learned: read in segments
        assert expected[1].num_chunks > model.aggregator.max_positions
    before = encoder_statistics(served.http_url)
    results = DocumentClassifierClient(served.grpc_url, "grpc").classify(texts, concurrency=2)
    for got, exp in zip(results, expected, strict=True):
        assert_same(got, exp, head)
    after = encoder_statistics(served.http_url)
    # the encoder never saw a batch above its max_batch_size, and got each document as
    # several requests
    assert max(batch_sizes(after)) <= MAX_BATCH_SIZE
    requests = int(after["inference_stats"]["success"]["count"]) - int(
        before["inference_stats"]["success"]["count"]
    )
    assert requests >= sum(math.ceil(e.num_chunks / MAX_BATCH_SIZE) for e in expected)
    raw = raw_infer(served.grpc_url, long_docs[65])
    assert int(raw[contract.NUM_CHUNKS][0]) == int(raw[contract.TOTAL_CHUNKS][0])
    assert int(raw[contract.NUM_CHUNKS][0]) == expected[0].num_chunks


def test_long_and_short_documents_together_get_their_own_answers(
    tiny_server, long_docs, short_docs
):
    served, model = tiny_server("logits-mean")
    texts = [long_docs[300], *short_docs[:12], long_docs[65], *short_docs[12:]]
    expected = reference(model, texts)
    results = DocumentClassifierClient(served.grpc_url, "grpc").classify(texts, concurrency=16)
    for got, exp in zip(results, expected, strict=True):
        assert_same(got, exp, "logits-mean")
    assert max(batch_sizes(encoder_statistics(served.http_url))) <= MAX_BATCH_SIZE


def test_opt_in_cap_reads_what_it_says(tiny_server, long_docs):
    served, model = tiny_server("mean-pool", max_chunks=8, overflow="head_tail")
    text = long_docs[65]
    expected = reference(model, [text])[0]
    raw = raw_infer(served.grpc_url, text)
    assert int(raw[contract.NUM_CHUNKS][0]) == expected.num_chunks == 8
    assert (
        int(raw[contract.TOTAL_CHUNKS][0])
        == chunk_text(text, load_tokenizer_of(model), ChunkingConfig()).num_chunks
    )
    np.testing.assert_allclose(raw[contract.LOGITS], expected.logits, atol=ATOL)
    result = DocumentClassifierClient(served.grpc_url).classify([text])[0]
    assert (result.num_chunks, result.total_chunks) == (8, int(raw[contract.TOTAL_CHUNKS][0]))


def load_tokenizer_of(model):
    from longdoc.chunking import load_tokenizer

    return load_tokenizer(model.tokenizer_path)


def test_max_windows_refuses_with_its_limit_served(tiny_server, long_docs):
    served, _ = tiny_server("logits-mean", max_windows=100)
    client = DocumentClassifierClient(served.grpc_url, "grpc", retries=0)
    long, short = client.classify([long_docs[300], long_docs[65]])
    assert not long.ok and "max_windows safety limit of 100" in long.error, long.error
    assert short.ok, short.error


@pytest.mark.slow
@pytest.mark.parametrize("head", HEADS)
def test_documents_of_2000_windows_equal_reference(tiny_server, tokenizer, head):
    served, model = tiny_server(head)
    text = real_document(tokenizer, 2000, seed=13)
    expected = reference(model, [text])[0]
    assert expected.num_chunks >= 2000
    got = DocumentClassifierClient(served.grpc_url, "grpc", timeout_s=1800).classify([text])[0]
    assert_same(got, expected, head)
    assert max(batch_sizes(encoder_statistics(served.http_url))) <= MAX_BATCH_SIZE


@pytest.mark.slow
def test_150k_token_document_default_export_plain_tritonclient(
    export_repo, serve, classifier_checkpoint, tokenizer
):
    """Done when: a 150,000-token real document, a default export (real MiniLM weights,
    logits-mean, FP32, portable), plain tritonclient: logits over all its windows."""
    from longdoc.checkpoint import load_checkpoint

    count = lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)  # noqa: E731
    text = corpus.document(150_000, seed=21, count_tokens=count)
    assert count(text) >= 150_000
    repo, _ = export_repo(checkpoint=classifier_checkpoint)
    served = serve(repo)
    try:
        model = load_checkpoint(classifier_checkpoint, num_labels=3)
        expected = reference(model, [text])[0]
        outputs = (
            contract.LOGITS,
            contract.CHUNK_LOGITS,
            contract.NUM_CHUNKS,
            contract.TOTAL_CHUNKS,
        )
        raw = raw_infer(served.grpc_url, text, outputs)
    finally:
        served.stop()
    assert expected.num_chunks == windows_for(count(text)) >= 392
    assert int(raw[contract.NUM_CHUNKS][0]) == int(raw[contract.TOTAL_CHUNKS][0])
    assert int(raw[contract.NUM_CHUNKS][0]) == expected.num_chunks
    np.testing.assert_allclose(raw[contract.CHUNK_LOGITS], expected.chunk_logits, atol=ATOL)
    np.testing.assert_allclose(raw[contract.LOGITS], expected.logits, atol=ATOL)


def peak_memory(pid: int) -> dict[str, dict[str, float]]:
    """Per server process (tritonserver, each stub by model instance): peak resident memory
    (VmHWM) and current RSS, MiB, from /proc/PID/status."""
    from loadgen import SERVER_PROCESSES, _proc_mib, _server_processes

    out: dict[str, dict[str, float]] = {}
    for proc in _server_processes(pid, SERVER_PROCESSES):
        try:
            cmd = proc.cmdline()
            mib = _proc_mib(proc.pid, "status", ("VmHWM", "VmRSS"))
        except OSError:
            continue
        stub = proc.name().startswith("triton_python") and len(cmd) > 2
        name = cmd[-2] if stub else proc.name()
        out[name] = {"peak_rss_mb": round(mib["VmHWM"], 1), "rss_mb": round(mib["VmRSS"], 1)}
    return out


@pytest.mark.slow
def test_million_token_document_bounded_memory(export_repo, serve, tokenizer, short_docs):
    """A real document of a million tokens (3.7 MB, under the 4 MB byte limit): read whole
    (2,618 windows, the transformer head in 11 segments), every server process's peak
    resident memory recorded (RELIABILITY.md), the server still answering afterwards."""
    from loadgen import save_results

    count = lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)  # noqa: E731
    text = corpus.document(1_000_000, seed=7, count_tokens=count)
    assert count(text) >= 1_000_000 and len(text.encode()) <= ChunkingConfig().max_bytes
    repo, _ = export_repo(preset="tiny", head="transformer")
    served = serve(repo)
    try:
        model = load_preset("tiny", "transformer", num_labels=3)
        expected = reference(model, [text])[0]
        idle = peak_memory(served.process.pid)
        client = DocumentClassifierClient(served.grpc_url, "grpc", timeout_s=3600)
        got = client.classify([text])[0]
        after = peak_memory(served.process.pid)
        assert_same(got, expected, "transformer")
        assert got.num_chunks == windows_for(count(text)) >= 2600
        later = DocumentClassifierClient(served.grpc_url, "grpc").classify(short_docs[:4])
        assert all(r.ok for r in later)
    finally:
        served.stop()
    save_results(
        "long_documents.json",
        "million_tokens",
        {
            "tokens": count(text),
            "bytes": len(text.encode()),
            "windows": got.num_chunks,
            "model": "tiny preset, transformer head, portable, fp32, default chunking",
            "after_start": idle,
            "after_document": after,
        },
    )
    for name, mem in after.items():
        assert mem["peak_rss_mb"] < 2048, (name, mem)  # bounded (figures: RELIABILITY.md)


PROBE_CONFIG = """name: "probe"
backend: "python"
max_batch_size: 0
input [ { name: "X", data_type: TYPE_INT32, dims: [ 1 ] } ]
output [ { name: "RESULT", data_type: TYPE_STRING, dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""
PROBE_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        try:
            pb_utils.InferenceRequest(model_name="probe", inputs=[], requested_output_names=[],
                                      priority=1)
            result = "accepted"
        except TypeError as exc:
            result = "TypeError: " + str(exc).splitlines()[0]
        out = pb_utils.Tensor("RESULT", np.array([result.encode()], dtype=object))
        return [pb_utils.InferenceResponse([out]) for _ in requests]
"""


def test_bls_requests_carry_no_priority_in_this_triton(serve, tmp_path):
    """Why the bulk class is the dispatcher's pacing and not Triton priorities: a BLS
    request cannot carry a priority in Triton 2.51, so an ensemble request's priority stops
    at the Python step (cf. server issue #6055). If a newer Triton accepts it, this fails:
    then give long documents a lower priority on the encoder (priority_levels)."""
    import tritonclient.grpc as grpcclient

    (tmp_path / "probe" / "1").mkdir(parents=True)
    (tmp_path / "probe" / "config.pbtxt").write_text(PROBE_CONFIG)
    (tmp_path / "probe" / "1" / "model.py").write_text(PROBE_MODEL)
    served = serve(tmp_path)
    try:
        client = grpcclient.InferenceServerClient(served.grpc_url)
        x = grpcclient.InferInput("X", [1], "INT32")
        x.set_data_from_numpy(np.array([1], dtype=np.int32))
        result = client.infer("probe", [x]).as_numpy("RESULT")[0].decode()
    finally:
        served.stop()
    assert result.startswith("TypeError"), result
