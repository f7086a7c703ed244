"""Triton Python backend (`portable` profile): the ONNX encoder through onnxruntime.

Triton's dynamic batcher hands over several requests (the chunks of several documents, all
of one sequence length); they are concatenated and run through onnxruntime ``ort_batch``
windows per call (0: all in one call), then the rows are split back per request. An INT8
export also ships its FP32 graph, served on CPUs without VNNI (`runtime.encoder_file`).

The encoder is reachable directly, like the ensemble, so each request is checked on its
own before the merged batch runs (`refusal`): one request with an id outside the
vocabulary would otherwise fail the onnxruntime call, and with it every other client's
windows in the batch. A refused request gets INVALID_ARG; the valid ones run as one batch.
(The graph clamps ids too, which is what the ``cpu``/``gpu`` profiles rely on: see
``export/to_onnx.py``; this profile refuses, so a caller learns that its input was bad.)
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from longdoc.contract import (
    ATTENTION_MASK,
    ENCODER_OUTPUT,
    INPUT_IDS,
    META_MAX_POSITIONS,
    META_VOCAB_SIZE,
    ONNX_FILE,
    PARAM_ONNX_FILE,
    PARAM_ORT_BATCH,
    PARAM_ORT_THREADS,
    PARAM_SEQ_LENGTHS,
)
from longdoc.runtime import config_param, encoder_file, make_session


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Rows of several arrays as one, without a copy when there is only one."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def refusal(
    ids: np.ndarray,
    mask: np.ndarray,
    vocab_size: int | None,
    seq_lengths: tuple[int, ...] | range | None,
    max_rows: int,
) -> str | None:
    """Why one request cannot join the batch (None: it can). Cheap next to the encoder:
    a min/max over the ids and the mask."""
    for name, array in ((INPUT_IDS, ids), (ATTENTION_MASK, mask)):
        if array.ndim != 2 or array.dtype != np.int64:
            return f"{name} must be a 2-D int64 array (got {array.dtype} {list(array.shape)})"
    if ids.shape != mask.shape:
        return f"{INPUT_IDS} {list(ids.shape)} and {ATTENTION_MASK} {list(mask.shape)} differ"
    rows, seq_len = ids.shape
    if not 1 <= rows <= max_rows:
        return f"{rows} windows in one request; 1 to {max_rows} allowed"
    if seq_len < 1:
        return "windows of 0 tokens"
    if seq_lengths and seq_len not in seq_lengths:
        if isinstance(seq_lengths, range):
            allowed = f"{seq_lengths.start} to {seq_lengths.stop - 1}"
        else:
            allowed = ", ".join(map(str, seq_lengths))
        return f"windows of {seq_len} tokens; this export allows {allowed}"
    if vocab_size is not None and (ids.min() < 0 or ids.max() >= vocab_size):
        return (
            f"{INPUT_IDS} must lie in [0, {vocab_size}) (got {int(ids.min())} to {int(ids.max())})"
        )
    if mask.min() < 0 or mask.max() > 1:
        return f"{ATTENTION_MASK} must be 0 or 1 (got {int(mask.min())} to {int(mask.max())})"
    return None


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = Path(args["model_repository"]) / args["model_version"]
        threads = int(config_param(config, PARAM_ORT_THREADS, "0"))
        onnx_file = config_param(config, PARAM_ONNX_FILE, ONNX_FILE)
        self.session = make_session(encoder_file(here, onnx_file), threads)
        self.ort_batch = int(config_param(config, PARAM_ORT_BATCH, "0"))
        self.max_rows = int(config.get("max_batch_size", 0)) or 2**31
        # The graph's own metadata (export.to_onnx); an export from before it has none,
        # and then only the window lengths are checked.
        meta = self.session.get_modelmeta().custom_metadata_map
        self.vocab_size = int(meta[META_VOCAB_SIZE]) if META_VOCAB_SIZE in meta else None
        lengths = config_param(config, PARAM_SEQ_LENGTHS, "")
        if lengths:
            self.seq_lengths = tuple(int(n) for n in lengths.split(","))
        elif META_MAX_POSITIONS in meta:
            self.seq_lengths = range(1, int(meta[META_MAX_POSITIONS]) + 1)
        else:
            self.seq_lengths = None

    def execute(self, requests):
        ids = [pb_utils.get_input_tensor_by_name(r, INPUT_IDS).as_numpy() for r in requests]
        masks = [pb_utils.get_input_tensor_by_name(r, ATTENTION_MASK).as_numpy() for r in requests]
        responses = [None] * len(requests)
        by_len = {}
        for i, (x, m) in enumerate(zip(ids, masks)):
            why = refusal(x, m, self.vocab_size, self.seq_lengths, self.max_rows)
            if why is None:
                by_len.setdefault(x.shape[1], []).append(i)
            else:
                error = pb_utils.TritonError(f"encoder: {why}", pb_utils.TritonError.INVALID_ARG)
                responses[i] = pb_utils.InferenceResponse(error=error)
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
                out = vectors[start : start + len(ids[i])]
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(ENCODER_OUTPUT, out)]
                )
                start += len(ids[i])
        return responses
