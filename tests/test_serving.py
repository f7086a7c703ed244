"""The served `document_classifier` against the PyTorch reference: a real tritonserver
(started by `longdoc serve`), real tritonclient over gRPC and HTTP, real documents."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest
from longdoc.client.classifier import DocumentClassifierClient
from longdoc.export.parity import TOLERANCES

from longdoc import corpus
from longdoc.checkpoint import load_checkpoint
from longdoc.chunking import ChunkingConfig
from longdoc.reference import classify as reference
from tests.conftest import LABELS

MAX_CHUNKS = 72  # room for the 60+ chunk document


def tokens_of(tokenizer):
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


@pytest.fixture(scope="module")
def documents(tokenizer):
    """Real documents of 1, ~3, ~12 and 60+ windows of 512 tokens."""
    count = tokens_of(tokenizer)
    texts = [
        corpus.document(40, seed=1),
        corpus.document(1_000, seed=2, count_tokens=count),
        corpus.document(4_500, seed=3, count_tokens=count),
        corpus.document(510 + 382 * 61, seed=4, count_tokens=count),
    ]
    return texts


def source_for(head, classifier_checkpoint, minilm):
    if head.startswith("logits"):
        return {"checkpoint": classifier_checkpoint, "head": head}
    return {"checkpoint": minilm, "head": head, "random_head": True}


@pytest.fixture(scope="module")
def server_for(export_repo, serve, classifier_checkpoint, minilm):
    cache = {}

    def get(head: str, precision: str = "fp32"):
        if (head, precision) not in cache:
            source = source_for(head, classifier_checkpoint, minilm)
            repo, report = export_repo(precision=precision, max_chunks=MAX_CHUNKS, **source)
            cache[head, precision] = (serve(repo), report)
        return cache[head, precision]

    return get


@pytest.fixture(scope="module")
def reference_model(classifier_checkpoint, minilm):
    cache = {}

    def get(head: str):
        if head not in cache:
            source = source_for(head, classifier_checkpoint, minilm)
            path = source.pop("checkpoint")
            cache[head] = load_checkpoint(
                path, num_labels=3, chunking=ChunkingConfig(max_chunks=MAX_CHUNKS), **source
            )
        return cache[head]

    return get


@pytest.mark.parametrize("head", ["logits-mean", "logits-max", "mean-pool", "transformer"])
def test_served_logits_equal_reference_fp32(server_for, reference_model, documents, head):
    served, _ = server_for(head)
    expected = reference(reference_model(head), documents)
    assert [e.num_chunks for e in expected][0] == 1 and expected[-1].num_chunks >= 60
    client = DocumentClassifierClient(served.grpc_url, "grpc")
    results = client.classify(documents, concurrency=4)
    for exp, got in zip(expected, results):
        assert got.ok, got.error
        assert got.num_chunks == exp.num_chunks
        np.testing.assert_allclose(got.logits, exp.logits, atol=TOLERANCES["fp32"])
        np.testing.assert_allclose(got.chunk_logits, exp.chunk_logits, atol=TOLERANCES["fp32"])
        np.testing.assert_array_equal(got.chunk_spans, exp.spans)
        # document logits are the mean (max) of the chunk logits
        reduce = np.max if head == "logits-max" else np.mean
        np.testing.assert_allclose(reduce(got.chunk_logits, axis=0), got.logits, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_served_reduced_precision_within_bounds(server_for, reference_model, documents, precision):
    served, report = server_for("logits-mean", precision)
    assert report["parity"]["passed"]
    expected = reference(reference_model("logits-mean"), documents)
    results = DocumentClassifierClient(served.http_url, "http").classify(documents)
    for exp, got in zip(expected, results):
        assert got.ok, got.error
        assert np.abs(got.logits - exp.logits).max() <= TOLERANCES[precision]


def test_int8_repository_serves_fp32_on_a_cpu_without_vnni(
    export_repo, serve, classifier_checkpoint, minilm, reference_model, documents, monkeypatch
):
    """On a CPU without VNNI (forced here with LONGDOC_INT8_KERNELS=avx2) an INT8
    repository serves its FP32 graph: logits equal the PyTorch reference (FP32 bound)."""
    source = source_for("logits-mean", classifier_checkpoint, minilm)
    repo, _ = export_repo(precision="int8", max_chunks=MAX_CHUNKS, **source)
    monkeypatch.setenv("LONGDOC_INT8_KERNELS", "avx2")
    served = serve(repo)
    expected = reference(reference_model("logits-mean"), documents)
    results = DocumentClassifierClient(served.http_url, "http").classify(documents)
    for exp, got in zip(expected, results):
        assert got.ok, got.error
        np.testing.assert_allclose(got.logits, exp.logits, atol=TOLERANCES["fp32"])
    served.stop()


def test_grpc_and_http_agree_and_class_count_names_labels(server_for, documents):
    served, _ = server_for("logits-mean")
    grpc = DocumentClassifierClient(served.grpc_url, "grpc").classify(documents[:3])
    http = DocumentClassifierClient(served.http_url, "http").classify(documents[:3])
    for a, b in zip(grpc, http):
        np.testing.assert_array_equal(a.logits, b.logits)
        np.testing.assert_array_equal(a.chunk_spans, b.chunk_spans)
        assert a.label_names == b.label_names == LABELS
        assert set(a.probabilities) == set(LABELS)
        assert abs(sum(a.probabilities.values()) - 1) < 1e-4
        # single-label: DECISIONS is the argmax, each window weighs 1/n (the mean head)
        assert a.labels == b.labels == [a.label] and a.multi_label is False
        np.testing.assert_array_equal(a.decisions, b.decisions)
        np.testing.assert_allclose(a.chunk_weights, 1.0 / a.num_chunks, rtol=1e-6)


def test_class_count_with_raw_tritonclient(server_for, documents):
    """The classification extension straight from tritonclient: 'p:index:label'."""
    import tritonclient.grpc as grpcclient

    served, _ = server_for("logits-mean")
    client = grpcclient.InferenceServerClient(served.grpc_url)
    text = grpcclient.InferInput("TEXT", [1], "BYTES")
    text.set_data_from_numpy(np.array([documents[2].encode()], dtype=object))
    out = grpcclient.InferRequestedOutput("PROBABILITIES", class_count=2)
    result = client.infer("document_classifier", [text], outputs=[out])
    top = [entry.decode().split(":") for entry in result.as_numpy("PROBABILITIES")]
    assert len(top) == 2 and all(label in LABELS for _, _, label in top)
    assert float(top[0][0]) >= float(top[1][0])


def test_chunk_spans_map_back_to_text(server_for, documents, tokenizer):
    served, _ = server_for("mean-pool")
    text = documents[2]
    result = DocumentClassifierClient(served.grpc_url).classify([text])[0]
    enc = tokenizer.encode(text, add_special_tokens=False)
    starts, ends = {o[0] for o in enc.offsets}, {o[1] for o in enc.offsets}
    previous = -1
    for start, end in result.chunk_spans:
        assert start in starts and end in ends and start > previous
        previous = start
    assert result.chunk_spans[0][0] == 0 and result.chunk_spans[-1][1] == len(text.rstrip())


def encoder_stats(url: str) -> tuple[int, int]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    stats = client.get_inference_statistics("encoder")["model_stats"][0]
    client.close()
    return int(stats["inference_stats"]["success"]["count"]), int(stats["execution_count"])


def test_concurrent_documents_share_encoder_batches(server_for, tokenizer):
    served, _ = server_for("logits-mean")
    count = tokens_of(tokenizer)
    # 16 one-window documents, sent at once (the generator adds whole paragraphs, so
    # ask for fewer tokens than a window holds and check the count)
    texts = [corpus.document(200, seed=100 + i, count_tokens=count) for i in range(16)]
    assert all(count(t) <= ChunkingConfig().body_length for t in texts)
    requests_before, executions_before = encoder_stats(served.http_url)
    results = DocumentClassifierClient(served.grpc_url).classify(texts, concurrency=16)
    assert all(r.ok and r.num_chunks == 1 for r in results)
    requests, executions = encoder_stats(served.http_url)
    requests -= requests_before
    executions -= executions_before
    assert requests == 16
    assert executions < requests, f"{executions} encoder executions for {requests} documents"


BAD_INPUTS = {
    "empty": (b"", "empty"),
    "whitespace": (b" \n\t ", "empty"),
    "invalid utf-8": (b"caf\xc3 \xff\xfe", "not valid UTF-8"),
    "control characters": (b"\x00\x01\x02", "no tokens"),
    "over byte limit": (b"a " * 2_100_000, "over the limit"),
    "over max_chunks": (None, "max_chunks"),
}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bad_inputs_get_their_own_errors(server_for, documents, protocol):
    served, _ = server_for("logits-mean")
    too_long = (corpus.document(30_000, seed=9) + " ") * 2
    names = list(BAD_INPUTS)
    bad = [BAD_INPUTS[n][0] if BAD_INPUTS[n][0] is not None else too_long.encode() for n in names]
    good = documents[:3]
    mixed = [x for pair in zip(bad, good * 2) for x in pair]
    client = DocumentClassifierClient(served.url(protocol), protocol, retries=0)
    results = client.classify(mixed, concurrency=12)
    for i, name in enumerate(names):
        bad_result, good_result = results[2 * i], results[2 * i + 1]
        assert not bad_result.ok and BAD_INPUTS[name][1] in bad_result.error, (name, bad_result)
        assert good_result.ok, good_result.error
    assert DocumentClassifierClient(served.url(protocol), protocol).classify(good[:1])[0].ok


def raw_infer_error(url: str, inputs) -> str:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    with pytest.raises(InferenceServerException) as info:
        client.infer("document_classifier", inputs)
    return str(info.value)


def test_wrong_shape_and_dtype_are_rejected(server_for):
    import tritonclient.grpc as grpcclient

    served, _ = server_for("logits-mean")
    two = grpcclient.InferInput("TEXT", [2], "BYTES")
    two.set_data_from_numpy(np.array([b"one", b"two"], dtype=object))
    assert "shape" in raw_infer_error(served.grpc_url, [two]).lower()
    empty = grpcclient.InferInput("TEXT", [0], "BYTES")
    empty.set_data_from_numpy(np.array([], dtype=object))
    assert "shape" in raw_infer_error(served.grpc_url, [empty]).lower()
    wrong = grpcclient.InferInput("TEXT", [1], "INT32")
    wrong.set_data_from_numpy(np.array([7], dtype=np.int32))
    assert "data-type" in raw_infer_error(served.grpc_url, [wrong]).lower()
    unknown = grpcclient.InferInput("BODY", [1], "BYTES")
    unknown.set_data_from_numpy(np.array([b"x"], dtype=object))
    assert "BODY" in raw_infer_error(served.grpc_url, [unknown])
    client = grpcclient.InferenceServerClient(served.grpc_url)
    assert client.is_server_ready() and client.is_model_ready("document_classifier")


def test_classify_cli(server_for, documents, tmp_path):
    import json
    import subprocess
    import sys

    served, _ = server_for("logits-mean")
    folder = tmp_path / "docs"
    (folder / "nested").mkdir(parents=True)
    (folder / "a.txt").write_text(documents[1])
    (folder / "nested" / "b.txt").write_text(documents[2])
    (folder / "empty.txt").write_text("  ")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(json.dumps({"id": "j1", "text": documents[0]}) + "\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "longdoc.cli",
            "classify",
            str(folder),
            str(jsonl),
            "-",
            "--url",
            served.grpc_url,
            "--top-k",
            "2",
            "--explain",
        ],
        input=documents[0],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert result.returncode == 1  # empty.txt failed
    records = {r["id"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert set(records) == {
        str(folder / "a.txt"),
        str(folder / "nested" / "b.txt"),
        str(folder / "empty.txt"),
        "j1",
        "stdin",
    }
    assert "empty" in records[str(folder / "empty.txt")]["error"]
    assert f"failed: {folder / 'empty.txt'}" in result.stderr
    good = records[str(folder / "nested" / "b.txt")]
    assert good["label"] in LABELS and len(good["probabilities"]) == 2
    assert good["num_chunks"] > 1
    assert good["explain"]["passage"] in documents[2]
    assert good["labels"] == [good["label"]]  # single-label: the decided label is the top one
    assert good["explain"]["label"] == good["label"] and "weight" in good["explain"]


def test_client_retries_then_reports_unavailable():
    from longdoc.client.classifier import ServerUnavailable

    from longdoc.server.probe import free_port

    client = DocumentClassifierClient(f"127.0.0.1:{free_port()}", retries=2, backoff_s=0.05)
    with pytest.raises(ServerUnavailable):
        asyncio.run(client.aclassify(["text"]))
