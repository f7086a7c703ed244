"""Frozen-encoder window vectors, computed once per window and cached on disk.

With ``--freeze-encoder`` every head trains on the same per-window vectors: the masked mean
of the last hidden states (what ``mean-pool`` and ``transformer`` aggregate) and BERT's
pooled ``[CLS]`` output (what a ``BertForSequenceClassification`` classifier reads, for the
``logits-*`` heads). Both come from one encoder pass over the windows that
``longdoc.chunking`` cuts, so a head is trained on the windows it will be served on.

One cache entry serves every cap. Its key is a hash of the encoder (config + weight files),
the parameters that decide where windows fall (``max_length``, ``overlap``, ``strategy``),
the data (ids, labels, contents) and the window mode; ``max_chunks`` and ``overflow`` are
not in it. An entry has a slot for every window of every document and remembers which
slots are filled: a run fills only the windows its cap reads, so a first-window run on a
fresh cache encodes one window per document, and any cap after an uncapped run encodes
nothing. Computation is resumable: windows are written in shards as they finish, and a
restarted run skips what is on disk.

Engines: onnxruntime on an exported, fused copy of the encoder (the fastest on CPU, and the
same graph family the server runs), or PyTorch (on CUDA, or when asked).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from longdoc.chunking import (
    ChunkingConfig,
    ChunkingError,
    load_tokenizer,
    select_windows,
    special_ids,
    window_ranges,
)
from longdoc.data import DataError, Example, data_hash

# 2: one entry per chunking without the cap, with a filled-slot mask (1 keyed the cap).
FEATURES_VERSION = 2
SHARD_DOCS = 32
HEAD_TOKENS = 128
# The chunking parameters that decide where a document's windows fall (the cache key).
WINDOW_KEYS = ("max_length", "overlap", "strategy")


def default_cache_dir() -> Path:
    return Path(os.environ.get("LONGDOC_CACHE", "runs/cache"))


def _hash_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def encoder_hash(encoder_dir: str | Path) -> str:
    """Hash of a Hugging Face BERT directory: config and weight files."""
    d = Path(encoder_dir)
    files = [d / "config.json"] + sorted(
        p for p in d.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file()
    )
    return _hash_files([p for p in files if p.is_file()])


def chunking_key(chunking: ChunkingConfig) -> dict:
    """The parameters that decide where windows fall; the cap is not one of them."""
    return {k: getattr(chunking, k) for k in WINDOW_KEYS}


def cache_key(enc_hash: str, chunking: ChunkingConfig, data: str, mode: str) -> str:
    spec = {
        "version": FEATURES_VERSION,
        "encoder": enc_hash,
        "chunking": chunking_key(chunking),
        "data": data,
        "mode": mode,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class FeatureSet:
    """A slot per window of every document (documents' windows contiguous); ``done`` marks
    the slots that hold a vector. ``computed``: windows encoded by the call that returned it."""

    mean: np.ndarray  # float32 [windows, H]
    pooled: np.ndarray  # float32 [windows, H]
    offsets: np.ndarray  # int64 [docs + 1]
    num_tokens: np.ndarray  # int64 [docs]
    key: str = ""
    done: np.ndarray | None = None  # bool [windows]; None: all filled
    computed: int = 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def windows(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def vectors(self, kind: str) -> np.ndarray:
        return self.mean if kind == "mean" else self.pooled


# --------------------------------------------------------------------------- windows


def head_tail_window(ids: np.ndarray, body: int, head: int = HEAD_TOKENS) -> np.ndarray:
    """The first ``head`` and last ``body - head`` tokens of a long document."""
    if len(ids) <= body:
        return ids
    return np.concatenate([ids[:head], ids[len(ids) - (body - head) :]])


def _tokens(text: str, tokenizer) -> np.ndarray:
    ids = np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)
    if ids.size == 0:
        raise ChunkingError("document has no tokens (empty, or only unknown characters)")
    return ids


def _rows(ids: np.ndarray, tokenizer, chunking: ChunkingConfig, mode: str, which) -> list:
    """The windows ``which`` (indices) of a tokenized document, unpadded, [CLS]/[SEP] on each."""
    cls_id, sep_id, _ = special_ids(tokenizer)
    if mode == "head_tail":
        bodies = [head_tail_window(ids, chunking.body_length)]
    else:
        ranges = window_ranges(len(ids), chunking.body_length, chunking.overlap, chunking.strategy)
        bodies = [ids[ranges[w][0] : ranges[w][1]] for w in which]
    return [np.concatenate([[cls_id], b, [sep_id]]).astype(np.int64) for b in bodies]


def document_windows(text: str, tokenizer, chunking: ChunkingConfig, mode: str):
    """``(list of unpadded int64 id arrays with [CLS]/[SEP], number of document tokens)``:
    the windows ``chunking`` keeps (its cap applied), or the one head+tail window."""
    ids = _tokens(text, tokenizer)
    which, _ = window_indices(len(ids), chunking, mode)
    return _rows(ids, tokenizer, chunking, mode, which), int(ids.size)


# --------------------------------------------------------------------------- selection
# Training and evaluation read the same cache: the windows a head uses are chosen here, once.


def window_indices(num_tokens: int, chunking: ChunkingConfig, mode: str) -> tuple[list[int], int]:
    """Which of a document's windows ``chunking`` keeps, and how many it has in all."""
    if mode == "head_tail":
        return [0], 1
    ranges = window_ranges(num_tokens, chunking.body_length, chunking.overlap, chunking.strategy)
    return select_windows(len(ranges), chunking), len(ranges)


def feature_chunking(chunking: ChunkingConfig, mode: str) -> ChunkingConfig:
    """The chunking to ask :func:`compute_features` for: the run's own (the cache key ignores
    the cap, and only the windows it reads are encoded); a ``head_tail`` run reads one."""
    if mode == "head_tail":
        return ChunkingConfig.from_dict({**chunking.to_dict(), "max_chunks": 1, "overflow": "head"})
    return chunking


def _wanted(num_tokens: int, chunking: ChunkingConfig, mode: str, example: Example) -> list[int]:
    try:
        return window_indices(num_tokens, chunking, mode)[0]
    except ChunkingError as exc:
        raise DataError(f"{example.source}: {exc}") from None


def select_features(
    features: FeatureSet, examples: list[Example], chunking: ChunkingConfig, mode: str, kind: str
) -> list[np.ndarray]:
    """Each document's window vectors under ``chunking`` (``kind``: ``mean`` or ``pooled``),
    from a feature set that :func:`compute_features` filled for that chunking or a wider one."""
    out = []
    vectors = features.vectors(kind)
    for i, example in enumerate(examples):
        rows = int(features.offsets[i]) + np.asarray(
            _wanted(int(features.num_tokens[i]), chunking, mode, example), dtype=np.int64
        )
        if features.done is not None and not features.done[rows].all():
            raise RuntimeError(f"{example.source}: window vectors missing from the cache")
        out.append(vectors[rows])
    return out


# --------------------------------------------------------------------------- engines


def _feature_module(encoder_dir: Path):
    import torch
    from transformers import BertModel

    from longdoc.heads import masked_mean

    class FeatureEncoder(torch.nn.Module):
        """ids, mask -> [masked mean of last hidden states | pooled [CLS]]."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel.from_pretrained(
                encoder_dir, attn_implementation="eager", add_pooling_layer=True
            )

        def forward(self, input_ids, attention_mask):
            out = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            )
            pooled = masked_mean(out.last_hidden_state, attention_mask)
            return torch.cat([pooled, out.pooler_output], dim=-1)

    return FeatureEncoder().eval()


class OnnxFeatureEngine:
    """The feature encoder exported to ONNX and fused by ORT's BERT optimizer."""

    def __init__(self, encoder_dir: Path, cache_dir: Path, enc_hash: str, threads: int = 0):
        import warnings

        import torch

        from longdoc.runtime import make_session

        path = cache_dir / "onnx" / f"{enc_hash[:24]}.onnx"
        if not path.is_file():
            from longdoc.export.precision import fuse

            module = _feature_module(encoder_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            plain = path.with_suffix(".plain.onnx")
            ids = torch.full((1, 16), 1000, dtype=torch.int64)
            axes = {n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask")}
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    (ids, torch.ones_like(ids)),
                    str(plain),
                    opset_version=17,
                    dynamo=False,
                    input_names=["input_ids", "attention_mask"],
                    output_names=["features"],
                    dynamic_axes={**axes, "features": {0: "batch"}},
                )
            cfg = module.bert.config
            tmp = path.with_suffix(".tmp.onnx")
            fuse(plain, tmp, cfg.num_attention_heads, cfg.hidden_size)
            tmp.rename(path)
            plain.unlink()
        self.session = make_session(path, threads or None)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids[None, :], "attention_mask": np.ones((1, len(ids)), np.int64)}
        return self.session.run(["features"], feeds)[0][0]


class TorchFeatureEngine:
    def __init__(self, encoder_dir: Path, device: str = "cpu") -> None:
        self.module = _feature_module(encoder_dir).to(device)
        self.device = device

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(ids[None, :]).to(self.device)
            return self.module(t, torch.ones_like(t))[0].float().cpu().numpy()


def make_engine(encoder_dir: Path, cache_dir: Path, enc_hash: str, engine: str = "auto"):
    if engine == "auto":
        import torch

        engine = "torch" if torch.cuda.is_available() else "onnx"
    if engine == "onnx":
        return OnnxFeatureEngine(encoder_dir, cache_dir, enc_hash)
    import torch

    return TorchFeatureEngine(encoder_dir, "cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------- cache


@dataclass
class _Entry:
    """A cache entry in memory: every window's slot, filled or not."""

    offsets: np.ndarray
    num_tokens: np.ndarray
    vectors: np.ndarray | None = None  # float32 [windows, 2H] once a window is known
    done: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def fill(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        if self.vectors is None:
            self.vectors = np.zeros((int(self.offsets[-1]), vectors.shape[1]), np.float32)
        self.vectors[rows] = vectors
        self.done[rows] = True

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp.npz")
        vectors = self.vectors if self.vectors is not None else np.zeros((len(self.done), 0))
        np.savez(
            tmp, vectors=vectors, done=self.done, offsets=self.offsets, num_tokens=self.num_tokens
        )
        tmp.rename(path)


def _scan(examples: list[Example], tokenizer, chunking: ChunkingConfig, mode: str):
    """Tokenize every document once: its token ids and its slot count (all its windows)."""
    tokens, counts = [], []
    for e in examples:
        try:
            ids = _tokens(e.text, tokenizer)
        except ChunkingError as exc:
            raise DataError(f"{e.source}: {exc}") from None
        tokens.append(ids)
        counts.append(window_indices(len(ids), chunking, mode)[1])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    num_tokens = np.asarray([len(t) for t in tokens], dtype=np.int64)
    return tokens, _Entry(offsets, num_tokens, done=np.zeros(int(offsets[-1]), dtype=bool))


def _load(entry: Path) -> _Entry | None:
    final = entry / "features.npz"
    if not final.is_file():
        return None
    with np.load(final) as z:
        vectors = z["vectors"] if z["vectors"].shape[1] else None
        return _Entry(z["offsets"], z["num_tokens"], vectors, z["done"].copy())


def compute_features(
    examples: list[Example],
    encoder_dir: str | Path,
    chunking: ChunkingConfig,
    *,
    mode: str = "chunks",
    cache_dir: str | Path | None = None,
    engine: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> FeatureSet:
    """Window vectors for ``examples``: the windows ``chunking`` reads (its cap applied) are
    taken from the cache entry of this encoder, window placement and data, and the missing
    ones encoded (resumably) and stored there. The returned set also holds every window an
    earlier run filled; ``computed`` counts the windows this call encoded."""
    from tqdm import tqdm

    encoder_dir = Path(encoder_dir)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    enc = encoder_hash(encoder_dir)
    digest = data_hash(examples)
    key = cache_key(enc, chunking, digest, mode)
    entry = cache_dir / "features" / key
    state, tokens, tokenizer = _load(entry), None, None
    if state is None:
        tokenizer = load_tokenizer(_tokenizer_dir(encoder_dir))
        tokens, state = _scan(examples, tokenizer, chunking, mode)
        entry.mkdir(parents=True, exist_ok=True)
        spec = {
            "encoder": str(encoder_dir),
            "encoder_hash": enc,
            "chunking": chunking_key(chunking),
            "documents": len(examples),
            "data_hash": digest,
            "mode": mode,
        }
        (entry / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
    parts = sorted(p for p in entry.glob("part-*.npz") if not p.name.endswith(".tmp.npz"))
    for part in parts:  # an interrupted run's finished shards
        with np.load(part) as z:
            state.fill(z["rows"], z["vectors"])
    missing = []  # (document, rows to encode, their window indices)
    for i, e in enumerate(examples):
        which = np.asarray(_wanted(int(state.num_tokens[i]), chunking, mode, e), dtype=np.int64)
        rows = state.offsets[i] + which
        todo = ~state.done[rows]
        if todo.any():
            missing.append((i, rows[todo], which[todo]))
    started, computed = time.perf_counter(), 0
    if missing:
        tokenizer = tokenizer or load_tokenizer(_tokenizer_dir(encoder_dir))
        run = make_engine(encoder_dir, cache_dir, enc, engine)
        total = sum(len(rows) for _, rows, _ in missing)
        label = f"features {mode} {chunking.max_length}/{chunking.overlap}"
        bar = tqdm(total=total, desc=label, unit="window", disable=not progress)
        for s in range(0, len(missing), SHARD_DOCS):
            shard_rows, vecs = [], []
            for i, rows, which in missing[s : s + SHARD_DOCS]:
                ids = tokens[i] if tokens is not None else _tokens(examples[i].text, tokenizer)
                for window in _rows(ids, tokenizer, chunking, mode, which):
                    vecs.append(run(window))
                    bar.update(1)
                shard_rows.append(rows)
            computed += len(vecs)
            bar.set_postfix(windows_per_s=f"{computed / (time.perf_counter() - started):.1f}")
            rows, stacked = np.concatenate(shard_rows), np.stack(vecs).astype(np.float32)
            name = f"part-{time.time_ns()}"  # unique, and sorted in the order written
            np.savez(entry / f"{name}.tmp.npz", rows=rows, vectors=stacked)
            (entry / f"{name}.tmp.npz").rename(entry / f"{name}.npz")
            state.fill(rows, stacked)
        bar.close()
    if missing or parts or not (entry / "features.npz").is_file():
        state.save(entry / "features.npz")
        for part in entry.glob("part-*.npz"):
            part.unlink()
    seconds = time.perf_counter() - started
    if computed:
        meta = {
            "windows": int(state.offsets[-1]),
            "filled": int(state.done.sum()),
            "computed": computed,
            "seconds": round(seconds, 1),
            "windows_per_s": round(computed / seconds, 2),
        }
        (entry / "timing.json").write_text(json.dumps(meta) + "\n")
        log(f"features: {computed} windows in {seconds:.0f} s -> {entry}")
    vectors = state.vectors if state.vectors is not None else np.zeros((len(state.done), 0))
    hidden = vectors.shape[1] // 2
    return FeatureSet(
        vectors[:, :hidden],
        vectors[:, hidden:],
        state.offsets,
        state.num_tokens,
        key,
        state.done,
        computed,
    )


def _tokenizer_dir(encoder_dir: Path) -> Path:
    from longdoc.checkpoint import default_tokenizer_dir

    return encoder_dir if (encoder_dir / "tokenizer.json").is_file() else default_tokenizer_dir()
