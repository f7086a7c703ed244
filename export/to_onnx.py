"""PyTorch encoder and aggregator -> plain FP32 ONNX graphs.

Why not `optimum.exporters.onnx`: it exports Hugging Face task models with their own I/O
(``token_type_ids`` in, ``logits``/``last_hidden_state`` out). Our encoder graph has to end
with the head's per-chunk pooling (masked mean over tokens, or chunk logits) and carry the
contract's names, and the aggregator is not a Hugging Face model at all. So both go through
`torch.onnx.export` from the same modules the reference runs; optimum's own exporter does
the same call underneath. The ONNX Runtime steps after it (fusion, FP16, INT8) are in
`export.precision`.

The encoder graph clamps its inputs first (`SafeEncoder`): ids into ``[0, vocab)``, the
mask into ``[0, 1]``. Under Triton's dynamic batcher the windows of several clients run in
one call, and one out-of-range id (the embedding lookup's error) would fail every request in
that batch; clamped, a hostile row gets a meaningless vector and the others are untouched.
That is what the ``cpu``/``gpu`` profiles (Triton's onnxruntime backend runs this file
as is) rely on; the ``portable`` encoder refuses such a request before running the batch
(``model_repository/encoder/1/model.py``). On valid inputs both clamps are no-ops (parity
is unchanged), and ORT's transformer optimizer still fuses the graph behind them: the
same fused ops as without the clamps (measured: tiny preset FP32, FP16, INT8; MiniLM FP32
with EmbedLayerNormalization, 6 Attention, 12 SkipLayerNormalization, INT8 with 6
QAttention; the Clip stays INT64 ahead of the ids' cast to INT32). The graph also records
``vocab_size`` and ``max_positions`` in its metadata (kept through fusion, FP16 and INT8),
which the portable encoder checks requests against.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from longdoc.checkpoint import LoadedModel
from longdoc.contract import (
    AGGREGATOR_INPUT,
    AGGREGATOR_OUTPUTS,
    CHUNK_LOGITS,
    CHUNK_WEIGHTS,
    ENCODER_INPUTS,
    ENCODER_OUTPUT,
    META_MAX_POSITIONS,
    META_VOCAB_SIZE,
)
from longdoc.heads import SingleDocumentAggregator

OPSET = 17


class SafeEncoder(torch.nn.Module):
    """The chunk encoder behind input clamps, so that no input value can fail the batch it
    is merged into (module docstring)."""

    def __init__(self, encoder: torch.nn.Module, vocab_size: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.vocab_size = vocab_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        input_ids = input_ids.clamp(0, self.vocab_size - 1)
        attention_mask = attention_mask.clamp(0, 1)
        return self.encoder(input_ids, attention_mask)


def _export(module: torch.nn.Module, args: tuple, path: Path, **kwargs) -> None:
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.inference_mode():
        # TracerWarnings about Python ints from shapes: the traced sizes stay symbolic.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
            **kwargs,
        )
    onnx.checker.check_model(str(path))


def export_encoder(model: LoadedModel, path: Path) -> Path:
    """``input_ids, attention_mask [batch, seq] int64 -> chunk_vectors [batch, D] float32``,
    inputs clamped (`SafeEncoder`), vocabulary and positions in the graph's metadata."""
    config = model.encoder.bert.config
    ids = torch.full((2, 16), 1000, dtype=torch.int64)
    mask = torch.ones_like(ids)
    axes = {name: {0: "batch", 1: "sequence"} for name in ENCODER_INPUTS}
    axes[ENCODER_OUTPUT] = {0: "batch"}
    _export(
        SafeEncoder(model.encoder, config.vocab_size),
        (ids, mask),
        path,
        input_names=list(ENCODER_INPUTS),
        output_names=[ENCODER_OUTPUT],
        dynamic_axes=axes,
    )
    graph = onnx.load(str(path))
    meta = {META_VOCAB_SIZE: config.vocab_size, META_MAX_POSITIONS: config.max_position_embeddings}
    onnx.helper.set_model_props(graph, {key: str(value) for key, value in meta.items()})
    onnx.save(graph, str(path))
    return path


def export_aggregator(model: LoadedModel, path: Path) -> Path:
    """``chunk_vectors [chunks, D] -> LOGITS [L], PROBABILITIES [L], CHUNK_LOGITS [chunks, L],
    CHUNK_WEIGHTS [chunks, L], DECISIONS [L]`` with the model's decision rule (thresholds)
    inside the graph."""
    vectors = torch.zeros((3, model.vector_size), dtype=torch.float32)
    _export(
        SingleDocumentAggregator(model.aggregator, model.decision),
        (vectors,),
        path,
        input_names=[AGGREGATOR_INPUT],
        output_names=list(AGGREGATOR_OUTPUTS),
        dynamic_axes={
            AGGREGATOR_INPUT: {0: "chunks"},
            CHUNK_LOGITS: {0: "chunks"},
            CHUNK_WEIGHTS: {0: "chunks"},
        },
    )
    return path
