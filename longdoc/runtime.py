"""Running the exported ONNX files in-process with onnxruntime.

Users, one code path: the `portable` profile's Triton models (encoder and aggregator run
here inside the Python backend), and, as the classifier interface on a repository
(``longdoc.results.Classifier``), evaluation, the export parity report and the benchmark's
in-process baseline (the ceiling for the server on the same files).

Repository layout read here (written by `longdoc export`):
``chunker/1/{tokenizer.json,chunking.json}``, ``encoder/1/model.onnx``,
``aggregator/1/model.onnx``, ``labels.txt`` and ``decision.json`` (how the logits become
labels; a repository exported before multi-label has none: single-label).

Torch-free by rule: the portable stubs import this module, and torch would cost each of
them ~230 MB of resident memory (RELIABILITY.md); tests/test_export.py checks it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from longdoc.chunking import ChunkingConfig, ChunkingError, Chunks, chunk_text, load_tokenizer
from longdoc.contract import (
    AGGREGATOR,
    AGGREGATOR_INPUT,
    AGGREGATOR_OUTPUTS,
    ATTENTION_MASK,
    CHUNK_LOGITS,
    CHUNK_WEIGHTS,
    CHUNKER,
    CHUNKING_FILE,
    DECISIONS,
    ENCODER,
    ENCODER_OUTPUT,
    ENSEMBLE,
    EXPORT_REPORT,
    FP32_FALLBACK_FILE,
    INPUT_IDS,
    LABELS_FILE,
    LOGITS,
    ONNX_FILE,
    PROBABILITIES,
    TOKENIZER_FILE,
)
from longdoc.decision import load_decision
from longdoc.machine import serving_int8_kernels
from longdoc.results import DocumentError, DocumentResult

__all__ = [
    "DocumentResult",
    "OnnxPipeline",
    "config_param",
    "export_metadata",
    "make_session",
    "read_labels",
]


def config_param(model_config: dict, key: str, default: str) -> str:
    """A string parameter of a Triton model config (the JSON the Python backend gets)."""
    return model_config.get("parameters", {}).get(key, {}).get("string_value", default)


def encoder_file(directory: str | Path, onnx_file: str = ONNX_FILE) -> Path:
    """The encoder graph to serve from ``directory`` on this CPU: ``onnx_file``, except
    where an INT8 export ships its FP32 graph too (``model_fp32.onnx``) and this CPU has
    no VNNI: there INT8 is no faster than FP32 and its AVX2 kernels saturate (DESIGN.md,
    BENCHMARKS.md "INT8 on CPUs with and without VNNI"), so the FP32 graph is served."""
    directory = Path(directory)
    fallback = directory / FP32_FALLBACK_FILE
    if fallback.is_file() and serving_int8_kernels() != "vnni":
        return fallback
    return directory / onnx_file


def make_session(
    path: str | Path, threads: int | None = None, providers: list[str] | None = None
) -> ort.InferenceSession:
    """An onnxruntime session; ``threads`` caps intra-op threads (0/None: all cores)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    threads = threads if threads is not None else int(os.environ.get("LONGDOC_ORT_THREADS", 0))
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def read_labels(path: str | Path) -> list[str]:
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


class OnnxPipeline:
    """chunk -> encoder (batched) -> aggregator, over a model repository's files."""

    def __init__(
        self,
        repository: str | Path,
        threads: int | None = None,
        max_batch: int = 64,
        encoder: str | Path | None = None,
    ) -> None:
        """``encoder``: the encoder graph to run (default: what `encoder_file` serves on
        this CPU; parity names the INT8 file itself)."""
        repo = Path(repository)
        self.tokenizer = load_tokenizer(repo / CHUNKER / "1" / TOKENIZER_FILE)
        self.chunking = ChunkingConfig.load(repo / CHUNKER / "1" / CHUNKING_FILE)
        self.labels = read_labels(repo / ENSEMBLE / LABELS_FILE)
        # the rule baked into the aggregator graph (its DECISIONS), as written at export
        self.decision = load_decision(repo / ENSEMBLE, len(self.labels))
        self.encoder_path = Path(encoder) if encoder else encoder_file(repo / ENCODER / "1")
        self.encoder = make_session(self.encoder_path, threads)
        self.aggregator = make_session(repo / AGGREGATOR / "1" / ONNX_FILE, threads)
        self.max_batch = max_batch

    def chunk(self, text: str) -> Chunks:
        return chunk_text(text, self.tokenizer, self.chunking)

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Chunk vectors for ``[N, S]`` windows, at most ``max_batch`` per call."""
        parts = []
        for i in range(0, len(input_ids), self.max_batch):
            feeds = {
                INPUT_IDS: input_ids[i : i + self.max_batch],
                ATTENTION_MASK: attention_mask[i : i + self.max_batch],
            }
            parts.append(self.encoder.run([ENCODER_OUTPUT], feeds)[0])
        return np.concatenate(parts).astype(np.float32, copy=False)

    def aggregate(self, vectors: np.ndarray) -> dict[str, np.ndarray]:
        """The aggregator's outputs by name (``AGGREGATOR_OUTPUTS``)."""
        outputs = self.aggregator.run(
            list(AGGREGATOR_OUTPUTS), {AGGREGATOR_INPUT: vectors.astype(np.float32)}
        )
        return dict(zip(AGGREGATOR_OUTPUTS, outputs, strict=True))

    def classify(self, texts: Sequence[str]) -> list[DocumentResult]:
        """``longdoc.results.Classifier``: like the server, windows of all documents with
        the same length share encoder calls (what Triton's dynamic batcher does), then each
        document is aggregated. One document at a time is ``classify([text])``."""
        chunked = []
        for index, text in enumerate(texts):
            try:
                chunked.append(self.chunk(text))
            except ChunkingError as exc:
                raise DocumentError(index, str(exc)) from exc
        vectors: list[np.ndarray | None] = [None] * len(chunked)
        by_len: dict[int, list[int]] = {}
        for index, chunks in enumerate(chunked):
            by_len.setdefault(chunks.seq_len, []).append(index)
        for indices in by_len.values():
            ids = np.concatenate([chunked[i].input_ids for i in indices])
            mask = np.concatenate([chunked[i].attention_mask for i in indices])
            out = self.encode(ids, mask)
            offset = 0
            for i in indices:
                vectors[i] = out[offset : offset + chunked[i].num_chunks]
                offset += chunked[i].num_chunks
        results = []
        for chunks, vec in zip(chunked, vectors, strict=True):
            out = self.aggregate(vec)
            results.append(
                DocumentResult(
                    out[LOGITS],
                    out[PROBABILITIES],
                    out[CHUNK_LOGITS],
                    chunks.spans,
                    num_tokens=chunks.num_tokens,
                    total_chunks=chunks.total_chunks or chunks.num_chunks,
                    chunk_weights=out[CHUNK_WEIGHTS],
                    decisions=out[DECISIONS],
                )
            )
        return results


def export_metadata(repository: str | Path) -> dict:
    """The export report written next to the model files (precision, head, parity...)."""
    path = Path(repository) / EXPORT_REPORT
    return json.loads(path.read_text()) if path.is_file() else {}
