"""PyTorch encoder and aggregator -> plain FP32 ONNX graphs.

Why not `optimum.exporters.onnx`: it exports Hugging Face task models with their own I/O
(``token_type_ids`` in, ``logits``/``last_hidden_state`` out). Our encoder graph has to end
with the head's per-chunk pooling (masked mean over tokens, or chunk logits) and carry the
contract's names, and the aggregator is not a Hugging Face model at all. So both go through
`torch.onnx.export` from the same modules the reference runs; optimum's own exporter does
the same call underneath. The ONNX Runtime steps after it (fusion, FP16, INT8) are in
`export.precision`.
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
    ENCODER_INPUTS,
    ENCODER_OUTPUT,
)
from longdoc.heads import SingleDocumentAggregator

OPSET = 17


def _export(module: torch.nn.Module, args: tuple, path: Path, **kwargs) -> None:
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.inference_mode():
        # TracerWarnings about Python ints from shapes: the traced sizes stay symbolic.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), opset_version=OPSET, dynamo=False, do_constant_folding=True,
            **kwargs,
        )  # fmt: skip
    onnx.checker.check_model(str(path))


def export_encoder(model: LoadedModel, path: Path) -> Path:
    """``input_ids, attention_mask [batch, seq] int64 -> chunk_vectors [batch, D] float32``."""
    ids = torch.full((2, 16), 1000, dtype=torch.int64)
    mask = torch.ones_like(ids)
    axes = {name: {0: "batch", 1: "sequence"} for name in ENCODER_INPUTS}
    axes[ENCODER_OUTPUT] = {0: "batch"}
    _export(
        model.encoder, (ids, mask), path, input_names=list(ENCODER_INPUTS),
        output_names=[ENCODER_OUTPUT], dynamic_axes=axes,
    )  # fmt: skip
    return path


def export_aggregator(model: LoadedModel, path: Path) -> Path:
    """``chunk_vectors [chunks, D] -> LOGITS [L], PROBABILITIES [L], CHUNK_LOGITS [chunks, L]``."""
    vectors = torch.zeros((3, model.vector_size), dtype=torch.float32)
    _export(
        SingleDocumentAggregator(model.aggregator), (vectors,), path,
        input_names=[AGGREGATOR_INPUT], output_names=list(AGGREGATOR_OUTPUTS),
        dynamic_axes={AGGREGATOR_INPUT: {0: "chunks"}, CHUNK_LOGITS: {0: "chunks"}},
    )  # fmt: skip
    return path
