"""The PyTorch reference: text -> logits with the same chunking as serving, in eval mode.

It is the ground truth of every parity check (export, served results, benchmarks), and the
PyTorch implementation of the classifier interface (``longdoc.results.Classifier``):

* :class:`ReferenceClassifier`: a loaded model on text. ``window="head_tail"`` reads the one
  head+tail window a ``--window head_tail`` run was trained on; ``pad_to_max_length`` with
  ``batch_size=1`` is the naive loop the benchmark measures (one window at a time, each
  padded to ``max_length``): the same computation, only slower.
* :class:`CachedFeatureClassifier`: a head trained on a frozen encoder, over the window
  vectors of the feature cache that training filled (same encoder, same windows).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from longdoc.checkpoint import LoadedModel, load_checkpoint
from longdoc.chunking import ChunkingConfig, ChunkingError, Chunks, chunk_text, load_tokenizer
from longdoc.chunking import special_ids as _special_ids
from longdoc.contract import CONFIG_FILE, LOGIT_HEADS, TRAINING_JSON
from longdoc.results import DocumentError, DocumentResult

__all__ = [
    "CachedFeatureClassifier",
    "DocumentResult",
    "ReferenceClassifier",
    "classify",
    "encode_chunks",
    "training_record",
]


def training_record(checkpoint: str | Path) -> dict:
    """The run record `longdoc train` wrote next to a checkpoint ({} for other checkpoints)."""
    import json

    path = Path(checkpoint) / TRAINING_JSON
    return json.loads(path.read_text()) if path.is_file() else {}


@torch.inference_mode()
def encode_chunks(model: LoadedModel, chunks: Chunks, batch_size: int = 16) -> torch.Tensor:
    """Chunk vectors ``[n_chunks, D]`` of one document, ``batch_size`` windows at a time."""
    ids = torch.from_numpy(chunks.input_ids)
    mask = torch.from_numpy(chunks.attention_mask)
    parts = [
        model.encoder(ids[i : i + batch_size], mask[i : i + batch_size])
        for i in range(0, len(ids), batch_size)
    ]
    return torch.cat(parts)


def _pad_to(chunks: Chunks, length: int, pad_id: int) -> Chunks:
    """The same windows padded to ``length`` tokens (no buckets)."""
    n, seq = chunks.input_ids.shape
    ids = np.full((n, length), pad_id, dtype=np.int64)
    mask = np.zeros((n, length), dtype=np.int64)
    ids[:, :seq], mask[:, :seq] = chunks.input_ids, chunks.attention_mask
    return Chunks(ids, mask, chunks.spans, chunks.num_tokens, chunks.truncated, chunks.total_chunks)


def document_results(
    model: LoadedModel, vectors: torch.Tensor, mask: torch.Tensor, counts: list[int]
) -> list[DocumentResult]:
    """One aggregator call over a padded batch, as one result per row (row ``i`` has
    ``counts[i]`` windows): the logits, the decision rule's probabilities and labels, each
    window's logits and weight."""
    from longdoc.heads import window_weights

    logits, chunk_logits = model.aggregator(vectors, mask)
    weights = window_weights(model.aggregator, vectors, mask, chunk_logits)
    results = []
    for row, n in enumerate(counts):
        out = logits[row].float().numpy()
        results.append(
            DocumentResult(
                logits=out,
                probabilities=model.decision.probabilities(out),
                chunk_logits=chunk_logits[row, :n].float().numpy(),
                spans=np.zeros((n, 2), dtype=np.int64),
                chunk_weights=weights[row, :n].float().numpy(),
                decisions=model.decision.decide(out),
            )
        )
    return results


class ReferenceClassifier:
    """The PyTorch reference on a loaded model (``longdoc.results.Classifier``)."""

    def __init__(
        self,
        model: LoadedModel,
        batch_size: int = 16,
        window: str = "chunks",
        pad_to_max_length: bool = False,
    ) -> None:
        self.model = model
        self.labels = model.labels
        self.batch_size = batch_size
        self.window = window
        self.pad_to_max_length = pad_to_max_length
        self.tokenizer = load_tokenizer(model.tokenizer_path)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        use_cache: bool = True,
        cache_dir: str | Path | None = None,
        progress: bool = True,
        **options,
    ) -> ReferenceClassifier:
        """A checkpoint directory (a `longdoc train` output or any checkpoint `longdoc
        export` reads), with the window its training record names; a head trained on a
        frozen encoder reads the feature cache unless ``use_cache`` is off."""
        from longdoc.features import encoder_hash

        record = training_record(checkpoint)
        model = load_checkpoint(checkpoint)
        window = record.get("window", "chunks")
        encoder = record.get("encoder", {})
        frozen = Path(encoder["path"]) if encoder.get("frozen") else None
        if (
            use_cache
            and frozen is not None
            and (frozen / CONFIG_FILE).is_file()
            and encoder_hash(frozen) == encoder.get("hash")
        ):
            chunking = ChunkingConfig.from_dict(record.get("chunking") or model.chunking.to_dict())
            return CachedFeatureClassifier(model, frozen, chunking, window, cache_dir, progress)
        return cls(model, window=window, **options)

    def windows(self, text: str) -> Chunks:
        """One document's windows, tokenized once."""
        if self.window == "head_tail":
            from longdoc.features import document_windows

            rows, num_tokens = document_windows(
                text, self.tokenizer, self.model.chunking, "head_tail"
            )
            ids = rows[0][None, :]
            spans = np.asarray([[0, len(text)]], dtype=np.int64)
            return Chunks(ids, np.ones_like(ids), spans, num_tokens, False, 1)
        chunks = chunk_text(text, self.tokenizer, self.model.chunking)
        if self.pad_to_max_length:
            pad_id = _special_ids(self.tokenizer)[2]
            chunks = _pad_to(chunks, self.model.chunking.max_length, pad_id)
        return chunks

    @torch.inference_mode()
    def classify(self, texts: Sequence[str]) -> list[DocumentResult]:
        """Reference logits for each text (``DocumentError`` names a bad document)."""
        results = []
        for index, text in enumerate(texts):
            try:
                chunks = self.windows(text)
            except ChunkingError as exc:
                raise DocumentError(index, str(exc)) from exc
            vectors = encode_chunks(self.model, chunks, self.batch_size).unsqueeze(0)
            mask = torch.ones(vectors.shape[:2], dtype=torch.int64)
            (result,) = document_results(self.model, vectors, mask, [chunks.num_chunks])
            result.spans = chunks.spans
            result.num_tokens = chunks.num_tokens
            result.total_chunks = chunks.total_chunks or chunks.num_chunks
            results.append(result)
        return results


class CachedFeatureClassifier:
    """A head trained on a frozen encoder, applied to the window vectors of the feature
    cache (``longdoc.features``): the same encoder and windows as PyTorch on the text,
    without encoding what training already encoded."""

    def __init__(
        self,
        model: LoadedModel,
        encoder_dir: Path,
        chunking: ChunkingConfig,
        window: str = "chunks",
        cache_dir: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        self.model, self.labels = model, model.labels
        self.encoder_dir, self.chunking, self.window = encoder_dir, chunking, window
        self.cache_dir, self.progress = cache_dir, progress

    @torch.inference_mode()
    def classify(self, texts: Sequence[str]) -> list[DocumentResult]:
        from longdoc.data import Example
        from longdoc.features import compute_features, feature_chunking, select_features
        from longdoc.heads import pad_batch

        examples = [Example(str(i), t, "", f"document {i + 1}") for i, t in enumerate(texts)]
        feats = compute_features(
            examples,
            self.encoder_dir,
            feature_chunking(self.chunking, self.window),
            mode=self.window,
            cache_dir=self.cache_dir,
            progress=self.progress,
        )
        logit_head = self.model.head in LOGIT_HEADS
        vectors = select_features(
            feats, examples, self.chunking, self.window, "pooled" if logit_head else "mean"
        )
        results = []
        for start in range(0, len(vectors), 64):
            part = [torch.from_numpy(np.ascontiguousarray(v)) for v in vectors[start : start + 64]]
            x, mask = pad_batch(part, "cpu")
            if logit_head:
                x = self.model.encoder.bert.classifier(x)
            batch = document_results(self.model, x, mask, [len(v) for v in part])
            for row, result in enumerate(batch):
                result.num_tokens = int(feats.num_tokens[start + row])
            results += batch
        return results


def classify(model: LoadedModel, texts: list[str], batch_size: int = 16) -> list[DocumentResult]:
    """Reference logits for each text (``ReferenceClassifier(model).classify``)."""
    return ReferenceClassifier(model, batch_size).classify(texts)
