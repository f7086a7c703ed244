"""A multi-label model with the attention head, served by a real tritonserver.

The checkpoint is built without training: the real MiniLM encoder (frozen) and a seeded
per-label attention head, saved with per-label thresholds (``decision.json``). Exported and
served once for the module; the served answers are compared with the PyTorch reference on
the same checkpoint: sigmoids, decided label sets, window weights, and what the client and
``longdoc classify --explain`` make of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import integration_fixture

from longdoc import contract, corpus

LABELS = ["contract", "filing", "report", "other"]
THRESHOLDS = (0.3, 0.5, 0.5, 0.7)
OPTIONS = {"attention_size": 32, "per_label": True}
# words: 1, 2, ~7 and ~17 windows of 512 tokens
LENGTHS = [30, 400, 1500, 4000]


@integration_fixture(scope="module")
def multilabel_checkpoint(tmp_path_factory, minilm):
    """MiniLM (frozen) + a seeded per-label attention head, multi-label thresholds."""
    import torch

    from longdoc.checkpoint import save_checkpoint
    from longdoc.chunking import ChunkingConfig
    from longdoc.decision import Decision
    from longdoc.heads import AttentionHead

    torch.manual_seed(11)
    head = AttentionHead(384, len(LABELS), **OPTIONS)
    with torch.no_grad():  # logits of order 1 and peaked attention: decisions that differ
        head.classifier.weight.normal_(0.0, 0.5)
        head.classifier.bias.zero_()
        head.score.weight.normal_(0.0, 3.0)
    out = tmp_path_factory.mktemp("multilabel") / "ckpt"
    save_checkpoint(
        out,
        head="attention",
        labels=LABELS,
        chunking=ChunkingConfig(),
        encoder_dir=minilm,
        tokenizer=minilm / contract.TOKENIZER_FILE,
        head_module=head.eval(),
        head_options=OPTIONS,
        decision=Decision("multi-label", THRESHOLDS, "per-label"),
    )
    return out


@pytest.fixture(scope="module")
def documents():
    return corpus.documents(LENGTHS, seed=21)


@pytest.fixture(scope="module")
def expected(multilabel_checkpoint, documents):
    """The PyTorch reference on the checkpoint (read back as `longdoc export` reads it)."""
    from longdoc.checkpoint import load_checkpoint
    from longdoc.reference import ReferenceClassifier

    model = load_checkpoint(multilabel_checkpoint)
    assert model.head == "attention" and model.head_options == OPTIONS
    assert model.decision.multi_label and model.decision.thresholds == THRESHOLDS
    return ReferenceClassifier(model).classify(documents)


@pytest.fixture(scope="module")
def served(export_repo, serve, multilabel_checkpoint):
    repo, report = export_repo(checkpoint=multilabel_checkpoint)
    return repo, report, serve(repo)


def test_export_records_the_decision(served, expected):
    repo, report, _ = served
    assert report["head"] == "attention" and report["labels"] == LABELS
    decision = json.loads((repo / contract.ENSEMBLE / contract.DECISION_FILE).read_text())
    assert decision == report["decision"]
    assert decision["problem"] == "multi-label" and decision["thresholds"] == list(THRESHOLDS)
    parity = report["parity"]
    assert parity["passed"] and parity["problem"] == "multi-label", parity
    assert parity["decisions_agreement"] == 1.0
    assert parity["max_abs_probabilities"] <= 1e-4 and parity["max_abs_chunk_weights"] <= 1e-4
    # the reference is really multi-label here: some documents decide other than one label
    assert {len(e.decided) for e in expected} - {1}
    assert expected[-1].num_chunks >= 10


def _raw(url: str, text: str, outputs):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput(contract.TEXT, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([text.encode()], dtype=object))
    return client.infer(contract.ENSEMBLE, [tensor], outputs=outputs)


def test_plain_tritonclient_gets_sigmoids_decisions_and_weights(served, expected, documents):
    """What a plain tritonclient user reads: PROBABILITIES are the reference's sigmoids,
    DECISIONS its decided sets (BOOL), CHUNK_WEIGHTS its attention; names from labels.txt."""
    import tritonclient.grpc as grpcclient

    repo, _, server = served
    names = (repo / contract.ENSEMBLE / contract.LABELS_FILE).read_text().split()
    assert names == LABELS
    wanted = [
        contract.LOGITS,
        contract.PROBABILITIES,
        contract.CHUNK_LOGITS,
        contract.CHUNK_WEIGHTS,
        contract.DECISIONS,
    ]
    for text, exp in zip(documents, expected):
        response = _raw(server.grpc_url, text, [grpcclient.InferRequestedOutput(n) for n in wanted])
        probabilities = response.as_numpy(contract.PROBABILITIES)
        decisions = response.as_numpy(contract.DECISIONS)
        weights = response.as_numpy(contract.CHUNK_WEIGHTS)
        assert decisions.dtype == np.bool_ and decisions.shape == (len(LABELS),)
        sigmoid = 1.0 / (1.0 + np.exp(-exp.logits.astype(np.float64)))
        np.testing.assert_allclose(probabilities, sigmoid, atol=1e-4)
        np.testing.assert_array_equal(decisions, exp.decisions)
        assert [names[i] for i in np.flatnonzero(decisions)] == [LABELS[i] for i in exp.decided]
        assert weights.shape == (exp.num_chunks, len(LABELS))
        np.testing.assert_allclose(weights, exp.chunk_weights, atol=1e-4)
        np.testing.assert_allclose(weights.sum(0), 1.0, atol=1e-5)
        # each label's logit is its attention-weighted sum of the window logits
        chunk_logits = response.as_numpy(contract.CHUNK_LOGITS)
        np.testing.assert_allclose(
            (weights * chunk_logits).sum(0), response.as_numpy(contract.LOGITS), atol=1e-4
        )


def test_classification_extension_names_multi_label_probabilities(served, expected, documents):
    """class_count on PROBABILITIES: every label's sigmoid with its name, largest first."""
    import tritonclient.grpc as grpcclient

    _, _, server = served
    for text, exp in zip(documents[:2], expected[:2]):
        output = grpcclient.InferRequestedOutput(contract.PROBABILITIES, class_count=len(LABELS))
        response = _raw(server.grpc_url, text, [output])
        entries = [e.decode().split(":") for e in response.as_numpy(contract.PROBABILITIES)]
        assert len(entries) == len(LABELS)
        values = [float(value) for value, _, _ in entries]
        assert values == sorted(values, reverse=True)
        for value, index, name in entries:
            assert name == LABELS[int(index)]
            assert abs(float(value) - exp.probabilities[int(index)]) < 1e-4


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_client_gives_the_decided_labels(served, expected, documents, protocol):
    from longdoc.client.classifier import DocumentClassifierClient

    _, _, server = served
    client = DocumentClassifierClient(server.url(protocol), protocol)
    for got, exp in zip(client.classify(documents, concurrency=2), expected):
        assert got.ok, got.error
        assert got.multi_label is True  # read from the served config
        assert got.label_names == LABELS
        assert got.labels == [LABELS[i] for i in exp.decided]
        assert got.label == LABELS[exp.index]
        for index, name in enumerate(LABELS):
            assert abs(got.probabilities[name] - exp.probabilities[index]) < 1e-4
        for index in exp.decided:
            assert got.best_chunk(LABELS[index]) == exp.best_chunk(index)


def test_classify_cli_prints_labels_and_explains_each_with_its_heaviest_window(
    served, expected, documents, tmp_path
):
    _, _, server = served
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(documents))
    )
    result = subprocess.run(
        [sys.executable, "-m", "longdoc.cli", "classify", str(jsonl), "--url", server.grpc_url]
        + ["--explain", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    records = {r["id"]: r for r in map(json.loads, result.stdout.splitlines())}
    differs = 0  # labels whose heaviest window is not their highest-scoring one
    for i, (text, exp) in enumerate(zip(documents, expected)):
        record = records[f"d{i}"]
        assert record["labels"] == [LABELS[k] for k in exp.decided]
        assert record["label"] == LABELS[exp.index]
        assert isinstance(record["explain"], list)  # multi-label: one passage per label
        assert [e["label"] for e in record["explain"]] == record["labels"]
        for entry in record["explain"]:
            k = LABELS.index(entry["label"])
            heaviest = int(np.argmax(exp.chunk_weights[:, k]))
            assert entry["chunk"] == heaviest == exp.best_chunk(k)
            assert abs(entry["weight"] - float(exp.chunk_weights[heaviest, k])) < 1e-4
            start, end = entry["span"]
            assert entry["passage"] == text[start:end] and end > start
            differs += heaviest != int(np.argmax(exp.chunk_logits[:, k]))
    assert differs  # the weights, not the window scores, chose these passages
