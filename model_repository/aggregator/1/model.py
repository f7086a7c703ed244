"""Triton Python backend (`portable` profile): the ONNX pooling head through onnxruntime.

One document per request: chunk vectors [n_chunks, D] -> LOGITS, PROBABILITIES, CHUNK_LOGITS,
CHUNK_WEIGHTS (FP32, as the graph gives them) and DECISIONS (BOOL).

Reachable directly, like the ensemble: a request without windows (the pooling would answer
uniform probabilities, a decision from nothing) or with NaN/inf vectors (NaN out) is refused
with INVALID_ARG instead of answered (`refusal`). The encoder never produces either.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from longdoc.contract import (
    AGGREGATOR_INPUT,
    AGGREGATOR_OUTPUTS,
    ONNX_FILE,
    PARAM_ONNX_FILE,
    PARAM_ORT_THREADS,
)
from longdoc.runtime import config_param, make_session


def refusal(vectors: np.ndarray) -> str | None:
    """Why these chunk vectors are no document's (None: they are one)."""
    if vectors.ndim != 2 or len(vectors) == 0:
        return f"{AGGREGATOR_INPUT} must hold at least one window (got {list(vectors.shape)})"
    if not np.isfinite(vectors).all():
        return f"{AGGREGATOR_INPUT} holds NaN or infinite values"
    return None


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = Path(args["model_repository"]) / args["model_version"]
        threads = int(config_param(config, PARAM_ORT_THREADS, "1"))  # one document per request
        onnx_file = config_param(config, PARAM_ONNX_FILE, ONNX_FILE)
        self.session = make_session(here / onnx_file, threads)

    def execute(self, requests):
        responses = []
        for request in requests:
            vectors = pb_utils.get_input_tensor_by_name(request, AGGREGATOR_INPUT).as_numpy()
            why = refusal(vectors)
            if why is not None:
                error = pb_utils.TritonError(f"aggregator: {why}", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            outputs = self.session.run(
                list(AGGREGATOR_OUTPUTS), {AGGREGATOR_INPUT: vectors.astype(np.float32, copy=False)}
            )
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(name, value)
                        for name, value in zip(AGGREGATOR_OUTPUTS, outputs, strict=True)
                    ]
                )
            )
        return responses
