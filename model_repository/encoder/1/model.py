"""Triton Python backend (`portable` profile): the ONNX encoder through onnxruntime.

Triton's dynamic batcher hands over several requests (the chunks of several documents, all
of one sequence length); they are concatenated and run through onnxruntime ``ort_batch``
windows per call (0: all in one call), then the rows are split back per request. An INT8
export also ships its FP32 graph, served on CPUs without VNNI (`runtime.encoder_file`).
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from longdoc.contract import (
    ATTENTION_MASK,
    ENCODER_OUTPUT,
    INPUT_IDS,
    ONNX_FILE,
    PARAM_ONNX_FILE,
    PARAM_ORT_BATCH,
    PARAM_ORT_THREADS,
)
from longdoc.runtime import config_param, encoder_file, make_session


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Rows of several arrays as one, without a copy when there is only one."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = Path(args["model_repository"]) / args["model_version"]
        threads = int(config_param(config, PARAM_ORT_THREADS, "0"))
        onnx_file = config_param(config, PARAM_ONNX_FILE, ONNX_FILE)
        self.session = make_session(encoder_file(here, onnx_file), threads)
        self.ort_batch = int(config_param(config, PARAM_ORT_BATCH, "0"))

    def execute(self, requests):
        ids = [pb_utils.get_input_tensor_by_name(r, INPUT_IDS).as_numpy() for r in requests]
        masks = [pb_utils.get_input_tensor_by_name(r, ATTENTION_MASK).as_numpy() for r in requests]
        outputs = [None] * len(requests)
        by_len = {}
        for i, x in enumerate(ids):
            by_len.setdefault(x.shape[1], []).append(i)
        for indices in by_len.values():
            feeds = {
                INPUT_IDS: _stack([ids[i] for i in indices]),
                ATTENTION_MASK: _stack([masks[i] for i in indices]),
            }
            rows = len(feeds[INPUT_IDS])
            step = self.ort_batch or rows
            run = self.session.run
            parts = [  # row slices are views: no copy per call
                run([ENCODER_OUTPUT], {k: v[i : i + step] for k, v in feeds.items()})[0]
                for i in range(0, rows, step)
            ]
            vectors = _stack(parts).astype(np.float32, copy=False)
            start = 0
            for i in indices:
                outputs[i] = vectors[start : start + len(ids[i])]
                start += len(ids[i])
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(ENCODER_OUTPUT, out)])
            for out in outputs
        ]
