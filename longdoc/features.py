"""Frozen-encoder window vectors, computed once per window and cached on disk.

With ``--freeze-encoder`` every head trains on the same per-window vectors: the masked mean
of the last hidden states (what ``mean-pool`` and ``transformer`` aggregate) and BERT's
pooled ``[CLS]`` output (what a ``BertForSequenceClassification`` classifier reads, for the
``logits-*`` heads). Both come from one encoder pass over the windows that
``longdoc.chunking`` cuts, so a head is trained on the windows it will be served on.

One cache entry serves every cap and every data set. Its key is a hash of the encoder
(config + weight files), the parameters that decide where windows fall (``max_length``,
``overlap``, ``strategy``) and the window mode; neither ``max_chunks``/``overflow`` nor the
data are in it. Inside, documents are found by the hash of their text, each with a slot for
every one of its windows and a mask of the slots filled: a run encodes only the windows its
cap reads that no run encoded before, so a first-window run on a fresh cache encodes one
window per document, any cap after an uncapped run encodes nothing, and a subsample, a
held-out slice or an evaluation in batches of 16 documents reuses what the whole split
filled. Computation is resumable: windows are written in shards as they finish, and a
restarted run skips what is on disk.

The engines that encode windows (onnxruntime on a fused export of the encoder, or PyTorch)
are in :mod:`longdoc.feature_engines`.
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
from longdoc.contract import CONFIG_FILE
from longdoc.data import DataError, Example
from longdoc.feature_engines import make_engine

# 3: one entry per encoder and window placement, documents by content hash, a filled-slot
# mask (2 keyed the data, 1 the data and the cap).
FEATURES_VERSION = 3
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
    files = [d / CONFIG_FILE] + sorted(
        p for p in d.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file()
    )
    return _hash_files([p for p in files if p.is_file()])


def chunking_key(chunking: ChunkingConfig) -> dict:
    """The parameters that decide where windows fall; the cap is not one of them."""
    return {k: getattr(chunking, k) for k in WINDOW_KEYS}


def cache_key(enc_hash: str, chunking: ChunkingConfig, mode: str) -> str:
    """The entry of an encoder and a window placement; documents are found in it by
    content, so the key holds neither the data nor the cap."""
    spec = {
        "version": FEATURES_VERSION,
        "encoder": enc_hash,
        "chunking": chunking_key(chunking),
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


# --------------------------------------------------------------------------- cache


@dataclass
class _Store:
    """A cache entry in memory: documents by content hash, a slot for each of their
    windows, and which slots hold a vector. One writer at a time is assumed: two processes
    filling one entry at once lose work (the last save wins), never corrupt it."""

    shas: list[str] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=lambda: [0])
    vectors: np.ndarray | None = None  # float32 [slots, 2H] once a window is known
    done: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    index: dict[str, int] = field(default_factory=dict)

    def add(self, sha: str, num_tokens: int, slots: int) -> None:
        self.index[sha] = len(self.shas)
        self.shas.append(sha)
        self.num_tokens.append(num_tokens)
        self.offsets.append(self.offsets[-1] + slots)

    def grow(self) -> None:
        """Room for the slots of the documents added since the last call."""
        extra = self.offsets[-1] - len(self.done)
        if extra:
            self.done = np.concatenate([self.done, np.zeros(extra, dtype=bool)])
        if self.vectors is not None and len(self.vectors) < len(self.done):
            pad = np.zeros((len(self.done) - len(self.vectors), self.vectors.shape[1]), np.float32)
            self.vectors = np.concatenate([self.vectors, pad])

    def fill(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        self.grow()
        if self.vectors is None:
            self.vectors = np.zeros((len(self.done), vectors.shape[1]), np.float32)
        self.vectors[rows] = vectors
        self.done[rows] = True

    def apply(self, part: Path) -> None:
        """Add an interrupted run's finished shard (documents, then their windows)."""
        with np.load(part) as z:
            for sha, tokens, slots in zip(z["doc_shas"], z["doc_tokens"], z["doc_slots"]):
                if str(sha) not in self.index:
                    self.add(str(sha), int(tokens), int(slots))
            docs = [self.index[str(sha)] for sha in z["win_shas"]]
            rows = np.asarray([self.offsets[d] for d in docs], dtype=np.int64) + z["win_index"]
            self.fill(rows, z["vectors"])

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp.npz")
        vectors = self.vectors if self.vectors is not None else np.zeros((len(self.done), 0))
        np.savez(
            tmp,
            shas=np.asarray(self.shas, dtype="U64"),
            vectors=vectors,
            done=self.done,
            num_tokens=np.asarray(self.num_tokens, dtype=np.int64),
            offsets=np.asarray(self.offsets, dtype=np.int64),
        )
        tmp.rename(path)

    @classmethod
    def load(cls, path: Path) -> _Store:
        if not path.is_file():
            return cls()
        with np.load(path) as z:
            shas = [str(x) for x in z["shas"]]
            vectors = z["vectors"] if z["vectors"].shape[1] else None
            return cls(
                shas,
                z["num_tokens"].tolist(),
                z["offsets"].tolist(),
                vectors,
                z["done"].copy(),
                {sha: i for i, sha in enumerate(shas)},
            )


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
    taken from the cache entry of this encoder and window placement, where documents are
    found by content (so any split, subsample, held-out slice or batch of them hits), and
    the missing ones are encoded (resumably) and stored there. The returned set also holds
    every window an earlier run filled; ``computed`` counts the windows this call encoded."""
    from tqdm import tqdm

    encoder_dir = Path(encoder_dir)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    enc = encoder_hash(encoder_dir)
    key = cache_key(enc, chunking, mode)
    entry = cache_dir / "features" / key
    entry.mkdir(parents=True, exist_ok=True)
    spec = {
        "encoder": str(encoder_dir),
        "encoder_hash": enc,
        "mode": mode,
        "chunking": chunking_key(chunking),
    }
    (entry / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
    store = _Store.load(entry / "store.npz")
    parts = sorted(p for p in entry.glob("part-*.npz") if not p.name.endswith(".tmp.npz"))
    for part in parts:  # an interrupted run's finished shards
        store.apply(part)
    tokenizer, tokens, shas = None, {}, [e.sha for e in examples]
    for e, sha in zip(examples, shas):
        if sha not in store.index and sha not in tokens:
            tokenizer = tokenizer or load_tokenizer(_tokenizer_dir(encoder_dir))
            try:
                tokens[sha] = _tokens(e.text, tokenizer)
            except ChunkingError as exc:
                raise DataError(f"{e.source}: {exc}") from None
            store.add(sha, len(tokens[sha]), window_indices(len(tokens[sha]), chunking, mode)[1])
    store.grow()
    missing, seen = [], set()  # (example, its document, window indices to encode)
    for i, (e, sha) in enumerate(zip(examples, shas)):
        d = store.index[sha]
        which = np.asarray(_wanted(store.num_tokens[d], chunking, mode, e), dtype=np.int64)
        which = which[~store.done[store.offsets[d] + which]]
        if len(which) and sha not in seen:
            seen.add(sha)
            missing.append((i, d, which))
    started, computed = time.perf_counter(), 0
    if missing:
        tokenizer = tokenizer or load_tokenizer(_tokenizer_dir(encoder_dir))
        run = make_engine(encoder_dir, cache_dir, enc, engine)
        total = sum(len(which) for _, _, which in missing)
        label = f"features {mode} {chunking.max_length}/{chunking.overlap}"
        bar = tqdm(total=total, desc=label, unit="window", disable=not progress)
        for s in range(0, len(missing), SHARD_DOCS):
            shard = missing[s : s + SHARD_DOCS]
            vecs, win_shas, win_index = [], [], []
            for i, _, which in shard:
                ids = tokens.get(shas[i])
                ids = ids if ids is not None else _tokens(examples[i].text, tokenizer)
                for w, window in zip(which, _rows(ids, tokenizer, chunking, mode, which)):
                    vecs.append(run(window))
                    win_shas.append(shas[i])
                    win_index.append(w)
                    bar.update(1)
            computed += len(vecs)
            bar.set_postfix(windows_per_s=f"{computed / (time.perf_counter() - started):.1f}")
            docs = [d for _, d, _ in shard]
            stacked = np.stack(vecs).astype(np.float32)
            name = entry / f"part-{time.time_ns()}"  # unique, sorted in the order written
            np.savez(
                f"{name}.tmp.npz",
                vectors=stacked,
                win_index=np.asarray(win_index),
                win_shas=np.asarray(win_shas, dtype="U64"),
                doc_shas=np.asarray([store.shas[d] for d in docs], dtype="U64"),
                doc_tokens=np.asarray([store.num_tokens[d] for d in docs]),
                doc_slots=np.asarray([store.offsets[d + 1] - store.offsets[d] for d in docs]),
            )
            Path(f"{name}.tmp.npz").rename(f"{name}.npz")
            rows = np.asarray([store.offsets[store.index[h]] for h in win_shas]) + win_index
            store.fill(rows, stacked)
        bar.close()
    if missing or parts or tokens:
        store.save(entry / "store.npz")
        for part in entry.glob("part-*.npz"):
            part.unlink()
    if computed:
        seconds = time.perf_counter() - started
        meta = {
            "documents": len(store.shas),
            "slots": int(len(store.done)),
            "filled": int(store.done.sum()),
            "computed": computed,
            "seconds": round(seconds, 1),
            "windows_per_s": round(computed / seconds, 2),
        }
        (entry / "timing.json").write_text(json.dumps(meta) + "\n")
        log(f"features: {computed} windows in {seconds:.0f} s -> {entry}")
    return _gather(store, shas, key, computed)


def _gather(store: _Store, shas: list[str], key: str, computed: int) -> FeatureSet:
    """The slots of ``shas``' documents, in their order, as one feature set."""
    docs = [store.index[sha] for sha in shas]
    slices = [np.arange(store.offsets[d], store.offsets[d + 1]) for d in docs]
    rows = np.concatenate(slices) if slices else np.zeros(0, dtype=np.int64)
    counts = [len(r) for r in slices]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    vectors = store.vectors[rows] if store.vectors is not None else np.zeros((len(rows), 0))
    hidden = vectors.shape[1] // 2
    num_tokens = np.asarray([store.num_tokens[d] for d in docs], dtype=np.int64)
    done = store.done[rows]
    return FeatureSet(
        vectors[:, :hidden], vectors[:, hidden:], offsets, num_tokens, key, done, computed
    )


def _tokenizer_dir(encoder_dir: Path) -> Path:
    from longdoc.checkpoint import encoder_tokenizer_dir  # imports torch: only when needed

    return encoder_tokenizer_dir(encoder_dir)
