"""The PyTorch reference: text -> logits with the same chunking as serving, in eval mode.

It is the ground truth of every parity check (export, served results, benchmarks).
"""

from __future__ import annotations

import torch

from longdoc.checkpoint import LoadedModel
from longdoc.chunking import Chunks, chunk_text, load_tokenizer
from longdoc.results import DocumentResult

__all__ = ["DocumentResult", "classify", "encode_chunks"]


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


@torch.inference_mode()
def classify(model: LoadedModel, texts: list[str], batch_size: int = 16) -> list[DocumentResult]:
    """Reference logits for each text (raises ``ChunkingError`` on a bad document)."""
    tokenizer = load_tokenizer(model.tokenizer_path)
    results = []
    for text in texts:
        chunks = chunk_text(text, tokenizer, model.chunking)
        vectors = encode_chunks(model, chunks, batch_size).unsqueeze(0)
        mask = torch.ones(vectors.shape[:2], dtype=torch.int64)
        logits, chunk_logits = model.aggregator(vectors, mask)
        results.append(
            DocumentResult(
                logits=logits[0].float().numpy(),
                probabilities=logits[0].float().softmax(-1).numpy(),
                chunk_logits=chunk_logits[0].float().numpy(),
                spans=chunks.spans,
            )
        )
    return results
