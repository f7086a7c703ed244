"""Frozen-encoder window vectors, computed once and cached on disk.

With ``--freeze-encoder`` every head trains on the same per-window vectors: the masked mean
of the last hidden states (what ``mean-pool`` and ``transformer`` aggregate) and BERT's
pooled ``[CLS]`` output (what a ``BertForSequenceClassification`` classifier reads, for the
``logits-*`` heads). Both come from one encoder pass over the windows that
``longdoc.chunking`` cuts, so a head is trained on the windows it will be served on.

The cache key is a hash of the encoder (config + weight files), the chunking parameters,
the data (ids, labels, contents) and the window mode; any change means a new cache entry.
Computation is resumable: shards of documents are written as they finish, and a restarted
run skips the shards already on disk.

Engines: onnxruntime on an exported, fused copy of the encoder (the fastest on CPU, and the
same graph family the server runs), or PyTorch (on CUDA, or when asked).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longdoc.chunking import ChunkingConfig, chunk_text, load_tokenizer, special_ids
from longdoc.data import Example, data_hash

FEATURES_VERSION = 1
SHARD_DOCS = 32
# Window modes: "chunks" = the serving windows; "head_tail" = one window of the first
# HEAD_TOKENS and last (body - HEAD_TOKENS) tokens (Sun et al. 2019), a baseline only.
MODES = ("chunks", "head_tail")
HEAD_TOKENS = 128


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
    """The parameters that change which windows a document gets."""
    keys = ("max_length", "overlap", "max_chunks", "overflow", "strategy")
    return {k: getattr(chunking, k) for k in keys}


def cache_key(enc_hash: str, chunking: ChunkingConfig, data: str, mode: str) -> str:
    spec = {
        "version": FEATURES_VERSION, "encoder": enc_hash, "chunking": chunking_key(chunking),
        "data": data, "mode": mode,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class FeatureSet:
    """Per-window vectors of a list of documents, documents' windows contiguous."""

    mean: np.ndarray  # float32 [windows, H]
    pooled: np.ndarray  # float32 [windows, H]
    offsets: np.ndarray  # int64 [docs + 1]
    num_tokens: np.ndarray  # int64 [docs]
    key: str = ""

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


def document_windows(text: str, tokenizer, chunking: ChunkingConfig, mode: str):
    """``(list of unpadded int64 id arrays with [CLS]/[SEP], number of document tokens)``."""
    if mode == "chunks":
        chunks = chunk_text(text, tokenizer, chunking)
        lengths = chunks.attention_mask.sum(axis=1)
        rows = [chunks.input_ids[i, : int(n)] for i, n in enumerate(lengths)]
        return rows, chunks.num_tokens
    if mode != "head_tail":
        raise ValueError(f"unknown window mode {mode!r}")
    cls_id, sep_id, _ = special_ids(tokenizer)
    ids = np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)
    body = head_tail_window(ids, chunking.body_length)
    return [np.concatenate([[cls_id], body, [sep_id]]).astype(np.int64)], int(ids.size)


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
                input_ids=input_ids, attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            )  # fmt: skip
            return torch.cat([masked_mean(out.last_hidden_state, attention_mask),
                              out.pooler_output], dim=-1)  # fmt: skip

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
                    module, (ids, torch.ones_like(ids)), str(plain), opset_version=17,
                    dynamo=False, input_names=["input_ids", "attention_mask"],
                    output_names=["features"], dynamic_axes={**axes, "features": {0: "batch"}},
                )  # fmt: skip
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


def compute_features(
    examples: list[Example],
    encoder_dir: str | Path,
    chunking: ChunkingConfig,
    *,
    mode: str = "chunks",
    cache_dir: str | Path | None = None,
    engine: str = "auto",
    progress: bool = True,
    log=print,
) -> FeatureSet:
    """Window vectors for ``examples``, from the cache when the same encoder, chunking and
    data were seen before; otherwise computed (resumably) and stored."""
    from tqdm import tqdm

    encoder_dir = Path(encoder_dir)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    enc = encoder_hash(encoder_dir)
    key = cache_key(enc, chunking, data_hash(examples), mode)
    entry = cache_dir / "features" / key
    final = entry / "features.npz"
    if final.is_file():
        with np.load(final) as z:
            return FeatureSet(z["mean"], z["pooled"], z["offsets"], z["num_tokens"], key)
    entry.mkdir(parents=True, exist_ok=True)
    (entry / "spec.json").write_text(json.dumps({
        "encoder": str(encoder_dir), "encoder_hash": enc, "chunking": chunking_key(chunking),
        "documents": len(examples), "data_hash": data_hash(examples), "mode": mode,
    }, indent=2) + "\n")  # fmt: skip
    tokenizer = load_tokenizer(
        encoder_dir if (encoder_dir / "tokenizer.json").is_file() else _default_tok()
    )
    shards = range(0, len(examples), SHARD_DOCS)
    todo = [s for s in shards if not (entry / f"part-{s:06d}.npz").is_file()]
    started, windows_done = time.perf_counter(), 0
    if todo:
        run = make_engine(encoder_dir, cache_dir, enc, engine)
        bar = tqdm(total=len(examples), initial=len(examples) - SHARD_DOCS * len(todo),
                   desc=f"features {mode} {chunking.max_length}/{chunking.overlap}",
                   unit="doc", disable=not progress)  # fmt: skip
        for start in todo:
            vecs, counts, tokens = [], [], []
            for e in examples[start : start + SHARD_DOCS]:
                rows, n_tokens = document_windows(e.text, tokenizer, chunking, mode)
                vecs.extend(run(r) for r in rows)
                counts.append(len(rows))
                tokens.append(n_tokens)
                windows_done += len(rows)
                bar.update(1)
            bar.set_postfix(windows_per_s=f"{windows_done / (time.perf_counter() - started):.1f}")
            tmp = entry / f"part-{start:06d}.tmp.npz"
            np.savez(tmp, vectors=np.stack(vecs).astype(np.float32),
                     counts=np.asarray(counts), tokens=np.asarray(tokens))  # fmt: skip
            tmp.rename(entry / f"part-{start:06d}.npz")
        bar.close()
    parts = [np.load(entry / f"part-{s:06d}.npz") for s in shards]
    vectors = np.concatenate([p["vectors"] for p in parts])
    counts = np.concatenate([p["counts"] for p in parts])
    tokens = np.concatenate([p["tokens"] for p in parts]).astype(np.int64)
    hidden = vectors.shape[1] // 2
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    np.savez(entry / "features.tmp.npz", mean=vectors[:, :hidden], pooled=vectors[:, hidden:],
             offsets=offsets, num_tokens=tokens)  # fmt: skip
    (entry / "features.tmp.npz").rename(final)
    for s in shards:
        (entry / f"part-{s:06d}.npz").unlink()
    seconds = time.perf_counter() - started
    meta = {
        "windows": int(offsets[-1]),
        "seconds": round(seconds, 1),
        "windows_per_s": round(windows_done / seconds, 2) if windows_done else None,
    }
    (entry / "timing.json").write_text(json.dumps(meta) + "\n")
    if windows_done:
        log(f"features: {windows_done} windows in {seconds:.0f} s -> {entry}")
    return FeatureSet(vectors[:, :hidden], vectors[:, hidden:], offsets, tokens, key)


def _default_tok() -> Path:
    from longdoc.checkpoint import default_tokenizer_dir

    return default_tokenizer_dir()
