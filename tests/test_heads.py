"""Each head's masking: padding tokens and padding chunks never change a result."""

from __future__ import annotations

import pytest
import torch

from longdoc.checkpoint import load_preset
from longdoc.decision import Decision
from longdoc.heads import (
    HEADS,
    AttentionHead,
    ChunkEncoder,
    SingleDocumentAggregator,
    make_aggregator,
    window_weights,
)

H, L = 32, 3


def aggregator(head: str, **extra):
    torch.manual_seed(0)
    options = {"layers": 2, "num_heads": 4, "max_positions": 16} if head == "transformer" else {}
    return make_aggregator(head, H, L, **options, **extra).eval()


@pytest.mark.parametrize("head", HEADS)
def test_padding_chunks_do_not_change_logits(head):
    agg = aggregator(head)
    dim = L if head.startswith("logits") else H
    torch.manual_seed(1)
    real = torch.randn(1, 5, dim)
    garbage = torch.randn(1, 3, dim) * 100
    padded = torch.cat([real, garbage], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    with torch.no_grad():
        alone, alone_chunks = agg(real, torch.ones(1, 5, dtype=torch.int64))
        with_pad, pad_chunks = agg(padded, mask)
    torch.testing.assert_close(alone, with_pad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone_chunks, pad_chunks[:, :5], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", HEADS)
def test_document_logits_are_the_weighted_chunk_logits(head):
    """Mean (max for logits-max) of the window logits; for every head, the document's
    logits are the CHUNK_WEIGHTS-weighted sum of its window logits (what --explain reads)."""
    agg = aggregator(head)
    dim = L if head.startswith("logits") else H
    torch.manual_seed(5)
    vectors = torch.randn(2, 4, dim)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        logits, chunk_logits = agg(vectors, mask)
        weights = window_weights(agg, vectors, mask, chunk_logits)
    assert weights.shape == chunk_logits.shape
    for b, n in enumerate((4, 2)):
        rows = chunk_logits[b, :n]
        if head != "attention":
            expected = rows.max(0).values if head == "logits-max" else rows.mean(0)
            torch.testing.assert_close(logits[b], expected, atol=1e-5, rtol=1e-5)
        weighted = (weights[b, :n] * rows).sum(0)
        torch.testing.assert_close(logits[b], weighted, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(weights[b, :n].sum(0), torch.ones(L), atol=1e-6, rtol=0)
        assert (weights[b, n:] == 0).all()


def test_window_weights_of_each_head():
    """mean heads: 1/n; logits-max: one-hot on the max's window; attention: learned (not
    uniform), the head's own softmax."""
    torch.manual_seed(6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    for head in ("logits-mean", "mean-pool", "transformer"):
        agg = aggregator(head)
        vectors = torch.randn(1, 7, L if head.startswith("logits") else H)
        with torch.no_grad():
            weights = window_weights(agg, vectors, mask, agg(vectors, mask)[1])
        expected = torch.tensor([0.2] * 5 + [0.0] * 2)[None, :, None].expand(1, 7, L)
        torch.testing.assert_close(weights, expected, atol=1e-7, rtol=0)
    agg = aggregator("logits-max")
    vectors = torch.randn(1, 7, L)
    vectors[0, 5:] = 100.0  # padding larger than any real window: never the max
    with torch.no_grad():
        weights = window_weights(agg, vectors, mask, agg(vectors, mask)[1])
    top = vectors[0, :5].argmax(0)
    expected = torch.zeros(7, L)
    expected[top, torch.arange(L)] = 1.0
    torch.testing.assert_close(weights[0], expected, atol=0, rtol=0)
    agg = aggregator("attention")
    vectors = torch.randn(1, 7, H) * 3
    with torch.no_grad():
        weights = window_weights(agg, vectors, mask, agg(vectors, mask)[1])
        learned = agg.attention(vectors, mask)
    torch.testing.assert_close(weights, learned.expand(1, 7, L), atol=0, rtol=0)
    assert weights[0, :5, 0].std() > 1e-3  # not uniform: the head chose
    torch.testing.assert_close(weights[0, :, 0], weights[0, :, 1])  # shared by the labels


@pytest.mark.parametrize("per_label", [False, True])
def test_attention_head_masks_padding_windows(per_label):
    """Padding windows (even huge ones) never change logits or weights; weights sum to 1
    over the real windows and are 0 on padding."""
    agg = aggregator("attention", per_label=per_label, attention_size=16)
    torch.manual_seed(7)
    real = torch.randn(2, 5, H)
    padded = torch.cat([real, torch.randn(2, 4, H) * 1000], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 4, [1] * 2 + [0] * 7])
    with torch.no_grad():
        logits, chunk_logits = agg(padded, mask)
        weights = window_weights(agg, padded, mask, chunk_logits)
        for row, n in enumerate((5, 2)):
            alone = real[row : row + 1, :n]
            ones = torch.ones(1, n, dtype=torch.int64)
            alone_logits, alone_chunks = agg(alone, ones)
            alone_weights = window_weights(agg, alone, ones, alone_chunks)
            torch.testing.assert_close(logits[row], alone_logits[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(weights[row, :n], alone_weights[0], atol=1e-6, rtol=1e-5)
            assert (weights[row, n:] == 0).all()
            torch.testing.assert_close(weights[row, :n].sum(0), torch.ones(L), atol=1e-6, rtol=0)
    if not per_label:
        torch.testing.assert_close(weights[..., 0], weights[..., 2])


def test_attention_head_per_label_attends_per_label():
    """per_label: one attention per label (scores [.., L]); each label weighs its windows
    its own way, and each label's logit is its own weighted sum."""
    agg = aggregator("attention", per_label=True, attention_size=16)
    assert isinstance(agg, AttentionHead) and agg.score.out_features == L
    shared = aggregator("attention", attention_size=16)
    assert shared.score.out_features == 1
    torch.manual_seed(8)
    vectors = torch.randn(1, 6, H) * 3
    mask = torch.ones(1, 6, dtype=torch.int64)
    with torch.no_grad():
        logits, chunk_logits = agg(vectors, mask)
        weights = agg.attention(vectors, mask)
    assert weights.shape == (1, 6, L)
    assert not torch.allclose(weights[..., 0], weights[..., 1], atol=1e-3)
    for label in range(L):
        expected = (weights[0, :, label] * chunk_logits[0, :, label]).sum()
        torch.testing.assert_close(logits[0, label], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", HEADS)
def test_single_document_form_matches_batched(head):
    agg = aggregator(head)
    dim = L if head.startswith("logits") else H
    vectors = torch.randn(6, dim)
    mask = torch.ones(1, 6, dtype=torch.int64)
    with torch.no_grad():
        logits, probs, chunk_logits, weights, decisions = SingleDocumentAggregator(agg)(vectors)
        batched, batched_chunks = agg(vectors[None], mask)
        batched_weights = window_weights(agg, vectors[None], mask, batched_chunks)
    torch.testing.assert_close(logits, batched[0])
    torch.testing.assert_close(probs, batched[0].softmax(-1))
    torch.testing.assert_close(chunk_logits, batched_chunks[0])
    torch.testing.assert_close(weights, batched_weights[0])
    assert decisions.dtype == torch.bool and decisions.tolist() == [
        i == int(batched[0].argmax()) for i in range(L)
    ]


def test_single_document_form_multi_label_uses_sigmoid_and_thresholds():
    agg = aggregator("attention")
    decision = Decision("multi-label", (0.2, 0.5, 0.8), "per-label")
    torch.manual_seed(9)
    vectors = torch.randn(4, H) * 3
    with torch.no_grad():
        logits, probs, _, _, decisions = SingleDocumentAggregator(agg, decision)(vectors)
    torch.testing.assert_close(probs, torch.sigmoid(logits))
    assert decisions.tolist() == (probs >= torch.tensor([0.2, 0.5, 0.8])).tolist()
    assert decisions.tolist() == decision.decide(logits.numpy()).tolist()


def test_transformer_head_uses_chunk_order():
    agg = aggregator("transformer")
    vectors = torch.randn(1, 4, H)
    mask = torch.ones(1, 4, dtype=torch.int64)
    with torch.no_grad():
        forward, _ = agg(vectors, mask)
        reversed_, _ = agg(vectors.flip(1), mask)
    assert not torch.allclose(forward, reversed_)  # chunk-position embeddings matter


@pytest.mark.parametrize("head", ["logits-mean", "mean-pool"])
def test_padding_tokens_do_not_change_chunk_vectors(head):
    model = load_preset("tiny", head, num_labels=L)
    torch.manual_seed(2)
    ids = torch.randint(1000, 5000, (2, 40))
    mask = torch.ones_like(ids)
    longer = torch.cat([ids, torch.randint(1000, 5000, (2, 24))], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(2, 24, dtype=torch.int64)], dim=1)
    with torch.no_grad():
        a = model.encoder(ids, mask)
        b = model.encoder(longer, longer_mask)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_models_are_loaded_in_eval_mode():
    model = load_preset("tiny", "transformer")
    assert not model.encoder.training and not model.aggregator.training
    ids = torch.randint(1000, 5000, (3, 20))
    with torch.no_grad():
        first = model.encoder(ids, torch.ones_like(ids))
        second = model.encoder(ids, torch.ones_like(ids))
    torch.testing.assert_close(first, second, atol=0, rtol=0)  # dropout is off


def test_unknown_pooling_rejected():
    with pytest.raises(ValueError):
        ChunkEncoder(torch.nn.Identity(), "cls")
    with pytest.raises(ValueError, match="unknown head"):
        make_aggregator("cls-token", H, L)


def _segment_by_segment(agg, vectors: torch.Tensor) -> torch.Tensor:
    """The rule past max_positions, spelled out: each run of max_positions windows read as
    a document of its own, chunk logits concatenated."""
    p = agg.max_positions
    parts = [
        agg(vectors[None, i : i + p], torch.ones(1, min(p, len(vectors) - i), dtype=torch.int64))[
            1
        ][0]
        for i in range(0, len(vectors), p)
    ]
    return torch.cat(parts)


@pytest.mark.parametrize("chunks", [15, 16, 17, 33, 50])
def test_transformer_head_past_max_positions_reads_segments(chunks):
    agg = aggregator("transformer")  # max_positions 16
    torch.manual_seed(3)
    vectors = torch.randn(chunks, H)
    with torch.no_grad():
        logits, chunk_logits = agg(vectors[None], torch.ones(1, chunks, dtype=torch.int64))
        expected = _segment_by_segment(agg, vectors)
    assert chunk_logits.shape == (1, chunks, L)
    torch.testing.assert_close(chunk_logits[0], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[0], expected.mean(0), atol=1e-5, rtol=1e-5)
    if chunks > 16:  # the first segment is read as a 16-window document would be
        with torch.no_grad():
            _, first = agg(vectors[None, :16], torch.ones(1, 16, dtype=torch.int64))
        torch.testing.assert_close(chunk_logits[0, :16], first[0], atol=1e-5, rtol=1e-5)


def test_transformer_head_segments_are_the_same_in_a_padded_batch():
    """Training batches pad documents to the longest: segment boundaries stay at multiples
    of max_positions from each document's start, and padding never leaks in."""
    agg = aggregator("transformer")
    torch.manual_seed(4)
    lengths = (40, 5, 20)
    batch = torch.randn(len(lengths), max(lengths), H) * 10
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.int64)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    with torch.no_grad():
        logits, chunk_logits = agg(batch, mask)
        for row, n in enumerate(lengths):
            alone, alone_chunks = agg(batch[row : row + 1, :n], torch.ones(1, n, dtype=torch.int64))
            torch.testing.assert_close(logits[row], alone[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(chunk_logits[row, :n], alone_chunks[0], atol=1e-5, rtol=1e-5)


def test_transformer_head_onnx_follows_the_same_rule_at_every_length(tmp_path):
    """The aggregator graph is traced once (3 windows) yet segments like PyTorch for any
    number of windows, below, at and past max_positions."""
    import numpy as np
    import onnxruntime as ort
    from longdoc.export.to_onnx import export_aggregator

    from longdoc.contract import AGGREGATOR_INPUT, AGGREGATOR_OUTPUTS

    agg = aggregator("transformer")

    class Model:  # what export_aggregator reads from a LoadedModel
        aggregator = agg
        vector_size = H
        decision = Decision()

    path = export_aggregator(Model, tmp_path / "aggregator.onnx")
    agg.eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for chunks in (1, 7, 16, 17, 40, 130):
        vectors = torch.randn(chunks, H)
        with torch.no_grad():
            logits, probs, chunk_logits, _, _ = SingleDocumentAggregator(agg)(vectors)
        out = dict(zip(AGGREGATOR_OUTPUTS, session.run(None, {AGGREGATOR_INPUT: vectors.numpy()})))
        np.testing.assert_allclose(out["LOGITS"], logits.numpy(), atol=1e-5)
        np.testing.assert_allclose(out["CHUNK_LOGITS"], chunk_logits.numpy(), atol=1e-5)
        assert out["CHUNK_LOGITS"].shape == (chunks, L)


MULTI = Decision("multi-label", (0.3, 0.5, 0.7), "per-label")


@pytest.mark.parametrize("decision", [None, MULTI], ids=["single", "multi"])
@pytest.mark.parametrize("per_label", [False, True])
def test_attention_head_onnx_parity_at_every_length(tmp_path, per_label, decision):
    """The exported attention aggregator (traced at 3 windows) equals PyTorch for 1 to 300
    windows: logits, probabilities, window logits, weights (1e-5) and decisions (equal)."""
    import numpy as np
    import onnxruntime as ort
    from longdoc.export.to_onnx import export_aggregator

    from longdoc.contract import AGGREGATOR_INPUT, AGGREGATOR_OUTPUTS

    agg = aggregator("attention", per_label=per_label, attention_size=16)

    class Model:  # what export_aggregator reads from a LoadedModel
        aggregator = agg
        vector_size = H

    Model.decision = decision or Decision()
    path = export_aggregator(Model, tmp_path / "aggregator.onnx")
    agg.eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    served = SingleDocumentAggregator(agg, decision).eval()
    torch.manual_seed(10)
    for chunks in (1, 2, 7, 64, 300):
        vectors = torch.randn(chunks, H) * 2
        with torch.no_grad():
            expected = dict(zip(AGGREGATOR_OUTPUTS, served(vectors)))
        got = dict(zip(AGGREGATOR_OUTPUTS, session.run(None, {AGGREGATOR_INPUT: vectors.numpy()})))
        for name in ("LOGITS", "PROBABILITIES", "CHUNK_LOGITS", "CHUNK_WEIGHTS"):
            assert got[name].dtype == np.float32, name
            np.testing.assert_allclose(got[name], expected[name].numpy(), atol=1e-5, err_msg=name)
        assert got["CHUNK_WEIGHTS"].shape == (chunks, L)
        assert got["DECISIONS"].dtype == np.bool_
        np.testing.assert_array_equal(got["DECISIONS"], expected["DECISIONS"].numpy())
        np.testing.assert_allclose(got["CHUNK_WEIGHTS"].sum(0), np.ones(L), atol=1e-5)


@pytest.mark.parametrize("head", ["mean-pool", "transformer"])
def test_heads_learn_a_subtle_signal_at_sentence_encoder_scale(head):
    """Window vectors the size a frozen sentence encoder gives (per-dimension spread ~0.25,
    class signal ~0.05): both vector heads must learn it. The transformer head's position
    embeddings once had nn.Embedding's N(0, 1) init, which drowned such a signal (0.655
    here) and left the kernel-docs head at the class prior (0.227)."""
    torch.set_num_threads(1)
    dim, labels, n = 128, 8, 400
    g = torch.Generator().manual_seed(0)
    means = torch.randn(labels, dim, generator=g) * 0.05

    def documents(count):
        y = torch.randint(0, labels, (count,), generator=g)
        xs = [
            means[k]
            + 0.25 * torch.randn(int(torch.randint(1, 9, (1,), generator=g)), dim, generator=g)
            for k in y
        ]
        return xs, y

    def pad(xs):
        x = torch.zeros(len(xs), max(len(v) for v in xs), dim)
        mask = torch.zeros(x.shape[:2], dtype=torch.int64)
        for i, v in enumerate(xs):
            x[i, : len(v)], mask[i, : len(v)] = v, 1
        return x, mask

    train, y_train = documents(n)
    test, y_test = documents(200)
    torch.manual_seed(0)
    model = make_aggregator(head, dim, labels)
    lr = 1e-3 if head == "transformer" else 1e-2
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(12):
        model.train()
        order = torch.randperm(n)
        for start in range(0, n, 16):
            batch = order[start : start + 16]
            logits, _ = model(*pad([train[i] for i in batch]))
            loss = torch.nn.functional.cross_entropy(logits, y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(*pad(test))[0].argmax(-1) == y_test).float().mean().item()
    assert accuracy > 0.8, f"{head}: test accuracy {accuracy:.3f} (chance {1 / labels:.3f})"
