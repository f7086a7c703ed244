"""Chunking edge cases on the real uncased WordPiece tokenizer and real text."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longdoc import corpus
from longdoc.chunking import (
    CHUNKING_FORMAT,
    ChunkingConfig,
    ChunkingError,
    chunk_text,
    decode_utf8,
    special_ids,
    window_ranges,
)


def body_tokens(tokenizer, n: int, seed: int = 0) -> str:
    """Real text cut to exactly ``n`` tokens (re-joined from its offsets)."""
    text = corpus.document(n * 2 + 50, seed=seed)
    enc = tokenizer.encode(text, add_special_tokens=False)
    return text[: enc.offsets[n - 1][1]]


def count(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def check_windows(tokenizer, text: str, cfg: ChunkingConfig, chunks) -> None:
    """Every window: [CLS] body [SEP] pad..., bodies overlap exactly, spans map back."""
    cls_id, sep_id, pad_id = special_ids(tokenizer)
    doc = tokenizer.encode(text, add_special_tokens=False)
    bodies = []
    for row in range(chunks.num_chunks):
        ids, mask = chunks.input_ids[row], chunks.attention_mask[row]
        width = int(mask.sum())
        assert width <= cfg.max_length
        assert ids[0] == cls_id and ids[width - 1] == sep_id
        assert (ids[width:] == pad_id).all() and (mask[width:] == 0).all()
        assert not (ids[1 : width - 1] == sep_id).any()
        bodies.append(ids[1 : width - 1].tolist())
    # bodies concatenated without their overlaps give back the whole document
    rebuilt = bodies[0] + [t for b in bodies[1:] for t in b[cfg.overlap :]]
    if not chunks.truncated:
        assert rebuilt == doc.ids
    for a, b in zip(bodies, bodies[1:]):
        assert a[-cfg.overlap :] == b[: cfg.overlap] if cfg.overlap else True
    # spans map back: the first/last body tokens' character offsets
    starts = {o[0] for o in doc.offsets}
    ends = {o[1] for o in doc.offsets}
    for start, end in chunks.spans:
        assert start in starts and end in ends and 0 <= start < end <= len(text)


def test_one_token(tokenizer):
    cfg = ChunkingConfig()
    chunks = chunk_text("Contract", tokenizer, cfg)
    assert chunks.num_chunks == 1 and chunks.num_tokens == 1
    assert chunks.input_ids.shape == (1, 128)  # smallest bucket
    assert chunks.attention_mask.sum() == 3
    assert chunks.spans.tolist() == [[0, 8]]


def test_exactly_one_window_and_one_past(tokenizer):
    cfg = ChunkingConfig(max_length=512, overlap=128)
    exact = body_tokens(tokenizer, 510)
    assert count(tokenizer, exact) == 510
    one = chunk_text(exact, tokenizer, cfg)
    assert one.num_chunks == 1 and one.attention_mask.sum() == 512
    check_windows(tokenizer, exact, cfg, one)
    past = body_tokens(tokenizer, 511)
    two = chunk_text(past, tokenizer, cfg)
    assert two.num_chunks == 2
    assert two.attention_mask[1].sum() == 2 + 128 + 1  # the overlap plus the one new token
    check_windows(tokenizer, past, cfg, two)


@pytest.mark.parametrize("overlap", [0, 1, 64, 125])
def test_overlap_limits(tokenizer, overlap):
    cfg = ChunkingConfig(max_length=128, overlap=overlap, max_chunks=5000)
    text = body_tokens(tokenizer, 2000, seed=overlap)
    chunks = chunk_text(text, tokenizer, cfg)
    stride = 126 - overlap
    assert chunks.num_chunks == 1 + int(np.ceil((2000 - 126) / stride))
    check_windows(tokenizer, text, cfg, chunks)


def test_overlap_must_leave_progress():
    with pytest.raises(ValueError, match="overlap"):
        ChunkingConfig(max_length=128, overlap=126)
    with pytest.raises(ValueError, match="overlap"):
        ChunkingConfig(max_length=512, overlap=-1)


def test_many_windows_real_text(tokenizer):
    cfg = ChunkingConfig()
    text = corpus.document(12_000, seed=3)
    chunks = chunk_text(text, tokenizer, cfg)
    assert chunks.num_chunks > 30 and chunks.seq_len == 512
    check_windows(tokenizer, text, cfg, chunks)


def test_tokenizer_file_truncation_is_ignored(tokenizer, minilm):
    import json

    # the MiniLM tokenizer.json truncates at 128 tokens; the chunker must see everything
    assert json.loads((minilm / "tokenizer.json").read_text())["truncation"]["max_length"] == 128
    text = body_tokens(tokenizer, 700)
    assert chunk_text(text, tokenizer, ChunkingConfig()).num_tokens == 700


def test_unicode_offsets_map_back(tokenizer):
    cfg = ChunkingConfig(max_length=32, overlap=8, max_chunks=100)
    text = ("Le café naïve — 東京 straße 🎉 مرحبا بالعالم. Ünïcödé ﬁnance Ωmega. " * 12).strip()
    chunks = chunk_text(text, tokenizer, cfg)
    assert chunks.num_chunks > 3
    check_windows(tokenizer, text, cfg, chunks)
    first = text[chunks.spans[0][0] : chunks.spans[0][1]]
    assert first.startswith("Le café")


@pytest.mark.parametrize("text", ["", "   ", "\n\t  \n"])
def test_empty_is_an_error(tokenizer, text):
    with pytest.raises(ChunkingError, match="empty"):
        chunk_text(text, tokenizer, ChunkingConfig())


def test_control_characters_only(tokenizer):
    with pytest.raises(ChunkingError, match="no tokens"):
        chunk_text("\x00\x01\x02", tokenizer, ChunkingConfig())


def test_overflow_policies(tokenizer):
    text = body_tokens(tokenizer, 3000)
    with pytest.raises(ChunkingError, match="max_chunks is 4"):
        chunk_text(text, tokenizer, ChunkingConfig(max_chunks=4))
    full = chunk_text(text, tokenizer, ChunkingConfig(max_chunks=64))
    head = chunk_text(text, tokenizer, ChunkingConfig(max_chunks=4, overflow="head"))
    assert head.truncated and (head.input_ids == full.input_ids[:4]).all()
    both = chunk_text(text, tokenizer, ChunkingConfig(max_chunks=4, overflow="head_tail"))
    assert (both.spans == np.concatenate([full.spans[:2], full.spans[-2:]])).all()


def test_byte_limit_and_utf8():
    with pytest.raises(ChunkingError, match="over the limit"):
        decode_utf8(b"x" * 101, max_bytes=100)
    with pytest.raises(ChunkingError, match="not valid UTF-8"):
        decode_utf8(b"ok \xff\xfe", max_bytes=100)
    assert decode_utf8("naïve".encode(), max_bytes=100) == "naïve"


def test_buckets(tokenizer):
    cfg = ChunkingConfig(seq_buckets=(64, 128, 256))
    assert cfg.seq_buckets == (64, 128, 256, 512)
    assert chunk_text(body_tokens(tokenizer, 100), tokenizer, cfg).seq_len == 128
    assert chunk_text(body_tokens(tokenizer, 300), tokenizer, cfg).seq_len == 512


def test_config_roundtrip(tmp_path):
    cfg = ChunkingConfig(max_length=256, overlap=32, max_chunks=9, overflow="head")
    cfg.save(tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text())["format"] == CHUNKING_FORMAT
    assert ChunkingConfig.load(tmp_path / "c.json") == cfg


def test_config_refuses_unknown_keys_and_versions(tmp_path):
    """Regression: unknown keys used to be dropped without a word, so an exporter and a
    server of different versions could cut different windows."""
    path = tmp_path / "chunking.json"
    data = ChunkingConfig(max_chunks=9).to_dict()
    path.write_text(json.dumps({**data, "stride": 256}))
    with pytest.raises(ValueError, match=r"chunking.json: unknown key 'stride'"):
        ChunkingConfig.load(path)
    with pytest.raises(ValueError, match=r"unknown keys 'a', 'b'"):
        ChunkingConfig.from_dict({**data, "b": 1, "a": 2})
    path.write_text(json.dumps({**data, "format": 2}))
    with pytest.raises(ValueError, match=r"chunking.json: format 2 is not one"):
        ChunkingConfig.load(path)
    # files written before the version existed (and head.json's "chunking") are format 1
    legacy = {k: v for k, v in data.items() if k != "format"}
    assert ChunkingConfig.from_dict(legacy) == ChunkingConfig(max_chunks=9)


def test_balanced_strategy(tokenizer):
    text = body_tokens(tokenizer, 1100)
    fixed = chunk_text(text, tokenizer, ChunkingConfig())
    balanced = chunk_text(text, tokenizer, ChunkingConfig(strategy="balanced"))
    assert fixed.num_chunks == balanced.num_chunks == 3
    widths = balanced.attention_mask.sum(1)
    assert widths.max() - widths.min() <= 2
    check_windows(tokenizer, text, ChunkingConfig(strategy="balanced"), balanced)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 5000),
    body=st.integers(2, 600),
    data=st.data(),
    strategy=st.sampled_from(["fixed", "balanced"]),
)
def test_window_ranges_properties(n, body, data, strategy):
    overlap = data.draw(st.integers(0, body - 1))
    ranges = window_ranges(n, body, overlap, strategy)
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    for start, end in ranges:
        assert 0 < end - start <= body
    for (s1, e1), (s2, _) in zip(ranges, ranges[1:]):
        assert s2 > s1 and e1 - s2 == overlap  # exactly `overlap` shared tokens
    fixed_count = len(window_ranges(n, body, overlap, "fixed"))
    assert len(ranges) == fixed_count


@settings(max_examples=40, deadline=None)
@given(
    words=st.integers(1, 900),
    seed=st.integers(0, 50),
    max_length=st.sampled_from([16, 64, 128, 512]),
    data=st.data(),
)
def test_chunk_text_properties(tokenizer, words, seed, max_length, data):
    overlap = data.draw(st.integers(0, max_length - 3))
    cfg = ChunkingConfig(max_length=max_length, overlap=overlap, max_chunks=10_000)
    text = corpus.document(words, seed=seed)[: words * 8]
    chunks = chunk_text(text, tokenizer, cfg)
    check_windows(tokenizer, text, cfg, chunks)
    assert (np.diff(chunks.spans[:, 0]) > 0).all()  # spans in order
