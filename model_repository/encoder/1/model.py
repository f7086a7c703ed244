"""Triton Python backend (`portable` profile): the ONNX encoder through onnxruntime.

Triton's dynamic batcher hands over several requests (the chunks of several documents, all
of one sequence length); they become ONE onnxruntime call, then the rows are split back.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from longdoc.runtime import ENCODER_OUTPUT, make_session


def _param(config, key, default):
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = Path(args["model_repository"]) / args["model_version"]
        threads = int(_param(config, "ort_threads", "0"))
        self.session = make_session(here / _param(config, "onnx_file", "model.onnx"), threads)

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
                "input_ids": np.concatenate([ids[i] for i in indices]).astype(np.int64),
                "attention_mask": np.concatenate([masks[i] for i in indices]).astype(np.int64),
            }
            vectors = self.session.run([ENCODER_OUTPUT], feeds)[0].astype(np.float32)
            start = 0
            for i in indices:
                outputs[i] = vectors[start : start + len(ids[i])]
                start += len(ids[i])
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(ENCODER_OUTPUT, out)])
            for out in outputs
        ]
