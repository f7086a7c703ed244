"""Cutting a document into overlapping BERT windows: the one source of truth.

The Triton chunker, the PyTorch reference, the in-process onnxruntime pipeline, the
benchmarks and the tests all import this module, so the windows a model was validated on
are the windows it is served on. Rules:

* the tokenizer sees the whole document (any truncation/padding in `tokenizer.json` is off);
* every window is ``[CLS] body [SEP]`` with ``len(body) <= max_length - 2``;
* neighbouring windows share exactly ``overlap`` body tokens;
* every window carries the character span ``(start, end)`` of its body in the text;
* a document's windows are padded to the smallest of a few fixed lengths (``seq_buckets``),
  because Triton's dynamic batcher only merges requests of equal shape.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from longdoc.contract import CHUNKING_DEFAULTS, OVERFLOW_POLICIES, STRATEGIES, TOKENIZER_FILE

DEFAULT_BUCKETS = CHUNKING_DEFAULTS["seq_buckets"]
# Version of the chunking.json layout. A reader refuses versions and keys it does not know:
# an exporter and a server of different versions must not cut different windows silently.
# A dict without "format" (files written before it existed, head.json) is version 1.
CHUNKING_FORMAT = 1


class ChunkingError(ValueError):
    """A document that cannot be chunked; the message is meant for the caller."""


@dataclass(frozen=True)
class ChunkingConfig:
    """How documents become windows. Export records it next to the model (chunking.json)."""

    max_length: int = CHUNKING_DEFAULTS["max_length"]
    overlap: int = CHUNKING_DEFAULTS["overlap"]
    # Opt-in cap on the windows read per document (0: every window, the default); past it
    # the overflow policy decides: refuse (error), keep the first (head) or both ends.
    max_chunks: int = CHUNKING_DEFAULTS["max_chunks"]
    overflow: str = CHUNKING_DEFAULTS["overflow"]
    strategy: str = CHUNKING_DEFAULTS["strategy"]
    seq_buckets: tuple[int, ...] = field(default=DEFAULT_BUCKETS)
    max_bytes: int = CHUNKING_DEFAULTS["max_bytes"]
    # Safety limit on the windows one document may send to the encoder (after max_chunks):
    # large by default. 4 MB of text is at most ~4M tokens (~10,500 windows of 512).
    max_windows: int = CHUNKING_DEFAULTS["max_windows"]

    def __post_init__(self) -> None:
        buckets = tuple(sorted({int(b) for b in self.seq_buckets if int(b) <= self.max_length}))
        if not buckets or buckets[-1] != self.max_length:
            buckets = buckets + (self.max_length,)
        object.__setattr__(self, "seq_buckets", buckets)
        self.validate()

    @property
    def body_length(self) -> int:
        """Document tokens per window (two places go to [CLS] and [SEP])."""
        return self.max_length - 2

    def validate(self) -> None:
        if self.max_length < 3:
            raise ValueError(f"max_length must be >= 3 (got {self.max_length})")
        if self.overlap < 0 or self.overlap >= self.body_length:
            raise ValueError(
                f"overlap must be in [0, max_length - 2) = [0, {self.body_length}) "
                f"(got {self.overlap}): windows would not advance"
            )
        if self.max_chunks < 0:
            raise ValueError(f"max_chunks must be >= 0, 0 for no cap (got {self.max_chunks})")
        if self.max_windows < 1:
            raise ValueError(f"max_windows must be >= 1 (got {self.max_windows})")
        if self.overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES} (got {self.overflow!r})")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES} (got {self.strategy!r})")
        if self.max_bytes < 1:
            raise ValueError("max_bytes must be positive")

    def to_dict(self) -> dict:
        """The chunking.json content: ``format`` plus every field."""
        data = {"format": CHUNKING_FORMAT, **asdict(self)}
        data["seq_buckets"] = list(self.seq_buckets)
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str = "chunking") -> ChunkingConfig:
        """The config ``data`` describes; a ``ValueError`` naming any key or format version
        this version does not know (``source`` says where ``data`` came from)."""
        fields = dict(data)
        version = fields.pop("format", CHUNKING_FORMAT)
        if version != CHUNKING_FORMAT:
            raise ValueError(
                f"{source}: format {version!r} is not one this longdoc reads (format "
                f"{CHUNKING_FORMAT}): export and serve with the same longdoc version"
            )
        unknown = sorted(set(fields) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"{source}: unknown key{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))} (format {CHUNKING_FORMAT} knows "
                f"{', '.join(cls.__dataclass_fields__)})"
            )
        if "seq_buckets" in fields:
            fields["seq_buckets"] = tuple(fields["seq_buckets"])
        return cls(**fields)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ChunkingConfig:
        return cls.from_dict(json.loads(Path(path).read_text()), source=str(path))


@dataclass
class Chunks:
    """The windows of one document, ready for the encoder."""

    input_ids: np.ndarray  # int64 [n_chunks, seq_len]
    attention_mask: np.ndarray  # int64 [n_chunks, seq_len]
    spans: np.ndarray  # int64 [n_chunks, 2], character offsets of each window's body
    num_tokens: int  # document tokens (before windowing, without special tokens)
    truncated: bool  # the overflow policy dropped windows
    total_chunks: int = 0  # windows the whole document has (before max_chunks)

    @property
    def num_chunks(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A fast tokenizer that sees the whole document, whatever the file says.

    `tokenizer.json` files often carry truncation (MiniLM's truncates at 128) and padding;
    both are switched off here because windowing is this module's job.
    """
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def special_ids(tokenizer: Tokenizer) -> tuple[int, int, int]:
    """The ids of [CLS], [SEP] and [PAD] (BERT WordPiece vocabularies)."""
    ids = [tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")]
    if any(i is None for i in ids):
        raise ValueError("tokenizer lacks one of [CLS], [SEP], [PAD]: not a BERT vocabulary")
    return ids[0], ids[1], ids[2]


def window_ranges(
    num_tokens: int, body: int, overlap: int, strategy: str = "fixed"
) -> list[tuple[int, int]]:
    """Token ranges ``[start, end)`` of the windows covering ``num_tokens`` tokens.

    ``fixed``: full windows of ``body`` tokens advancing by ``body - overlap``; the last one
    may be short. ``balanced``: the same number of windows, but the tokens spread evenly so
    no window is mostly padding. Neighbours share exactly ``overlap`` tokens in both.
    """
    if num_tokens <= body:
        return [(0, num_tokens)]
    stride = body - overlap
    count = 1 + math.ceil((num_tokens - body) / stride)
    if strategy == "fixed":
        return [(k * stride, min(k * stride + body, num_tokens)) for k in range(count)]
    # balanced: window length w with count * w - (count - 1) * overlap >= num_tokens
    width = math.ceil((num_tokens + (count - 1) * overlap) / count)
    step = width - overlap
    return [(k * step, min(k * step + width, num_tokens)) for k in range(count)]


def select_windows(count: int, cfg: ChunkingConfig) -> list[int]:
    """Indices of the windows to keep under ``max_chunks`` and the overflow policy."""
    if not cfg.max_chunks or count <= cfg.max_chunks:
        return list(range(count))
    if cfg.overflow == "error":
        raise ChunkingError(
            f"document needs {count} chunks but max_chunks is {cfg.max_chunks} "
            f"(overflow policy 'error'; use 'head' or 'head_tail' to truncate)"
        )
    if cfg.overflow == "head":
        return list(range(cfg.max_chunks))
    head = (cfg.max_chunks + 1) // 2
    tail = cfg.max_chunks - head
    return list(range(head)) + list(range(count - tail, count))


def pick_bucket(length: int, buckets: tuple[int, ...]) -> int:
    """The smallest fixed sequence length that holds ``length`` tokens."""
    for bucket in buckets:
        if length <= bucket:
            return bucket
    raise ValueError(f"{length} tokens exceed the largest bucket {buckets[-1]}")


def plan_windows(num_tokens: int, cfg: ChunkingConfig) -> tuple[list[tuple[int, int]], int, int]:
    """The windows ``chunk_text`` cuts ``num_tokens`` document tokens into, as token ranges
    after ``max_chunks`` and the overflow policy; their padded length (with [CLS]/[SEP]);
    and the number of windows before truncation. No tokenizer: what-if planning uses it."""
    all_ranges = window_ranges(num_tokens, cfg.body_length, cfg.overlap, cfg.strategy)
    ranges = [all_ranges[i] for i in select_windows(len(all_ranges), cfg)]
    if len(ranges) > cfg.max_windows:
        raise ChunkingError(
            f"document has {len(all_ranges)} windows ({num_tokens} tokens), over the "
            f"max_windows safety limit of {cfg.max_windows}"
        )
    seq_len = pick_bucket(max(end - start for start, end in ranges) + 2, cfg.seq_buckets)
    return ranges, seq_len, len(all_ranges)


def decode_utf8(data: bytes, max_bytes: int) -> str:
    """Strict UTF-8 decoding with the size check first, so a huge input costs nothing."""
    if len(data) > max_bytes:
        raise ChunkingError(f"document is {len(data)} bytes, over the limit of {max_bytes} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ChunkingError(f"document is not valid UTF-8: {exc}") from None


def chunk_text(text: str, tokenizer: Tokenizer, cfg: ChunkingConfig) -> Chunks:
    """Tokenize one document and cut it into padded windows with [CLS]/[SEP] on each."""
    if len(text) > cfg.max_bytes or len(text.encode("utf-8", "surrogatepass")) > cfg.max_bytes:
        raise ChunkingError(f"document is over the limit of {cfg.max_bytes} bytes")
    if not text.strip():
        raise ChunkingError("document is empty or whitespace only")
    encoding = tokenizer.encode(text, add_special_tokens=False)
    ids = np.asarray(encoding.ids, dtype=np.int64)
    if ids.size == 0:
        raise ChunkingError("document has no tokens (only control or unknown characters)")
    offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
    cls_id, sep_id, pad_id = special_ids(tokenizer)

    ranges, seq_len, total = plan_windows(len(ids), cfg)

    n = len(ranges)
    input_ids = np.full((n, seq_len), pad_id, dtype=np.int64)
    attention_mask = np.zeros((n, seq_len), dtype=np.int64)
    spans = np.zeros((n, 2), dtype=np.int64)
    for row, (start, end) in enumerate(ranges):
        width = end - start
        input_ids[row, 0] = cls_id
        input_ids[row, 1 : 1 + width] = ids[start:end]
        input_ids[row, 1 + width] = sep_id
        attention_mask[row, : width + 2] = 1
        spans[row] = (offsets[start, 0], offsets[end - 1, 1])
    return Chunks(
        input_ids, attention_mask, spans, int(ids.size), truncated=n < total, total_chunks=total
    )
