"""Triton Python backend: a document's windows -> chunk vectors, through the encoder in
slices (BLS), so a document of any length is read whole.

Triton's dynamic batcher never splits a request and refuses one larger than the encoder's
``max_batch_size``; so this step sends a document's windows to the encoder as requests of
at most ``slice_windows`` windows each (``pb_utils.InferenceRequest(...).async_exec()``),
with at most ``inflight_slices`` of them outstanding per document. The batcher merges those
slices with other documents' windows; a short document waits behind at most
``slice_windows x inflight_slices`` windows of a long one (the encoder queue is FIFO, and a
BLS request carries no priority in Triton 2.51). The vectors are written back in order.

An encoder error (a refused request under the queue policy, a failed execution) is the
document's error, with the encoder's own error code. Standard library + numpy only: this
stub stays small (no torch, no onnxruntime).

The dispatcher is reachable directly, like the ensemble, and one request holds an instance
until all its slices are back; so it refuses at once (INVALID_ARG) what the chunker never
sends: more windows than the export's ``max_windows``, window lengths other than its
``seq_buckets``, ids and mask of different shapes (`refusal`). A request whose client gave
up (``request.is_cancelled()``, in the python backend of Triton 2.51) sends no further
slice and is answered CANCELLED: the slices already out finish, nothing more is encoded.
"""

import asyncio
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from longdoc.contract import (
    ATTENTION_MASK,
    CHUNKING_DEFAULTS,
    DISPATCHER_OUTPUT,
    ENCODER,
    ENCODER_OUTPUT,
    INPUT_IDS,
    PARAM_ENCODER_MODEL,
    PARAM_INFLIGHT_SLICES,
    PARAM_MAX_WINDOWS,
    PARAM_SEQ_LENGTHS,
    PARAM_SLICE_WINDOWS,
)

DEFAULT_MAX_WINDOWS = CHUNKING_DEFAULTS["max_windows"]


def _param(config: dict, key: str, default: str) -> str:
    # longdoc.runtime.config_param, without importing onnxruntime into this stub
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def refusal(
    ids: np.ndarray, mask: np.ndarray, max_windows: int, seq_lengths: tuple[int, ...] | None
) -> str | None:
    """Why a request is not a document's windows as the chunker cuts them (None: it is).
    Shapes only: the encoder checks the values of each slice itself."""
    if ids.ndim != 2 or ids.shape != mask.shape:
        return (
            f"{INPUT_IDS} and {ATTENTION_MASK} must be [windows, tokens] arrays of one shape "
            f"(got {list(ids.shape)} and {list(mask.shape)})"
        )
    windows, seq_len = ids.shape
    if not 1 <= windows <= max_windows:
        return f"{windows} windows; this export allows 1 to {max_windows} per document"
    if seq_lengths is not None and seq_len not in seq_lengths:
        allowed = ", ".join(map(str, seq_lengths))
        return f"windows of {seq_len} tokens; this export allows {allowed}"
    return None


class EncoderFailed(Exception):
    def __init__(self, error) -> None:
        super().__init__(error.message())
        self.error = error


class Cancelled(Exception):
    """The client gave up on the document: no further slice is sent."""


def _cancelled(request) -> bool:
    """Whether the request was cancelled; False where the backend cannot tell."""
    is_cancelled = getattr(request, "is_cancelled", None)
    return bool(is_cancelled()) if is_cancelled is not None else False


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.encoder = _param(config, PARAM_ENCODER_MODEL, ENCODER)
        self.slice = max(1, int(_param(config, PARAM_SLICE_WINDOWS, "64")))
        self.inflight = max(1, int(_param(config, PARAM_INFLIGHT_SLICES, "1")))
        # An export from before these parameters: the contract's default max_windows, any
        # window length (the encoder still checks each slice).
        self.max_windows = int(_param(config, PARAM_MAX_WINDOWS, str(DEFAULT_MAX_WINDOWS)))
        lengths = _param(config, PARAM_SEQ_LENGTHS, "")
        self.seq_lengths = tuple(int(n) for n in lengths.split(",")) if lengths else None

    async def execute(self, requests):
        # Not decoupled: Triton runs this coroutine to completion, one request at a time
        # per instance (decoupled would make the ensemble refuse plain ModelInfer calls).
        return [await self._one(request) for request in requests]

    async def _one(self, request):
        ids = pb_utils.get_input_tensor_by_name(request, INPUT_IDS).as_numpy()
        mask = pb_utils.get_input_tensor_by_name(request, ATTENTION_MASK).as_numpy()
        why = refusal(ids, mask, self.max_windows, self.seq_lengths)
        if why is not None:
            error = pb_utils.TritonError(f"dispatcher: {why}", pb_utils.TritonError.INVALID_ARG)
            return pb_utils.InferenceResponse(error=error)
        n = len(ids)
        gate = asyncio.Semaphore(self.inflight)
        vectors = [None]
        failed = []  # once a slice fails, the slices still waiting are not sent

        async def encode(start: int) -> None:
            end = min(start + self.slice, n)
            async with gate:
                if failed:
                    return
                if _cancelled(request):
                    failed.append(True)
                    raise Cancelled()
                inputs = [
                    pb_utils.Tensor(INPUT_IDS, ids[start:end]),
                    pb_utils.Tensor(ATTENTION_MASK, mask[start:end]),
                ]
                response = await pb_utils.InferenceRequest(
                    model_name=self.encoder, inputs=inputs, requested_output_names=[ENCODER_OUTPUT]
                ).async_exec()
            if response.has_error():
                failed.append(True)
                raise EncoderFailed(response.error())
            part = pb_utils.get_output_tensor_by_name(response, ENCODER_OUTPUT).as_numpy()
            if vectors[0] is None:
                vectors[0] = np.empty((n, part.shape[1]), dtype=np.float32)
            vectors[0][start:end] = part

        try:
            await asyncio.gather(*(encode(start) for start in range(0, n, self.slice)))
        except EncoderFailed as exc:
            return pb_utils.InferenceResponse(error=exc.error)
        except Cancelled:
            code = pb_utils.TritonError.CANCELLED  # with is_cancelled: Triton >= 2.39
            error = pb_utils.TritonError("dispatcher: the request was cancelled", code)
            return pb_utils.InferenceResponse(error=error)
        except Exception as exc:  # never let one document take the others down
            failed.append(True)
            error = pb_utils.TritonError(f"dispatcher failed: {exc}", pb_utils.TritonError.INTERNAL)
            return pb_utils.InferenceResponse(error=error)
        tensor = pb_utils.Tensor(DISPATCHER_OUTPUT, vectors[0])
        return pb_utils.InferenceResponse(output_tensors=[tensor])
