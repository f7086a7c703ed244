"""One document's answer, as every path returns it: the PyTorch reference, the in-process
onnxruntime pipeline and (through the client) the server. numpy only: the Triton stubs'
imports (``longdoc.runtime``) must not pull in torch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DocumentResult:
    """One document's decision, with the per-chunk scores behind it."""

    logits: np.ndarray  # [L]
    probabilities: np.ndarray  # [L]
    chunk_logits: np.ndarray  # [n_chunks, L]
    spans: np.ndarray  # [n_chunks, 2]

    @property
    def num_chunks(self) -> int:
        return int(self.chunk_logits.shape[0])
