"""Triton Python backend (`portable` profile): the ONNX encoder through onnxruntime.

Triton's dynamic batcher hands over several requests (the chunks of several documents, all
of one sequence length); they are concatenated and run through onnxruntime ``ort_batch``
windows per call (0: all in one call), then the rows are split back per request.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from longdoc.runtime import ENCODER_OUTPUT, config_param, make_session


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Rows of several arrays as one, without a copy when there is only one."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = Path(args["model_repository"]) / args["model_version"]
        threads = int(config_param(config, "ort_threads", "0"))
        self.session = make_session(here / config_param(config, "onnx_file", "model.onnx"), threads)
        self.ort_batch = int(config_param(config, "ort_batch", "0"))

    def execute(self, requests):
        ids = [pb_utils.get_input_tensor_by_name(r, "input_ids").as_numpy() for r in requests]
        masks = [
            pb_utils.get_input_tensor_by_name(r, "attention_mask").as_numpy() for r in requests
        ]
        outputs = [None] * len(requests)
        by_len = {}
        for i, x in enumerate(ids):
            by_len.setdefault(x.shape[1], []).append(i)
        for indices in by_len.values():
            feeds = {
                "input_ids": _stack([ids[i] for i in indices]),
                "attention_mask": _stack([masks[i] for i in indices]),
            }
            rows = len(feeds["input_ids"])
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
