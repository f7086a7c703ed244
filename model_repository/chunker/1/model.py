"""Triton Python backend: UTF-8 text -> BERT windows, via the one chunking module.

Reads `tokenizer.json` and `chunking.json` from its own version directory (written by
`longdoc export`). Every window of a document by default (the dispatcher step sends them to
the encoder in slices); NUM_CHUNKS says how many were read and TOTAL_CHUNKS how many the
document has (fewer read only under an opt-in max_chunks cap). Each bad request (empty,
invalid UTF-8, over the byte limit, over an opt-in max_chunks cap under the error policy,
over the max_windows safety limit) gets its own INVALID_ARG error; the others in the same
batch still succeed.
"""

import ctypes
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from longdoc.chunking import ChunkingConfig, ChunkingError, chunk_text, decode_utf8, load_tokenizer
from longdoc.contract import (
    ATTENTION_MASK,
    CHUNK_SPANS,
    CHUNKER_INPUT,
    CHUNKING_FILE,
    INPUT_IDS,
    NUM_CHUNKS,
    TOKENIZER_FILE,
    TOTAL_CHUNKS,
)


class TritonPythonModel:
    def initialize(self, args):
        here = Path(args["model_repository"]) / args["model_version"]
        self.tokenizer = load_tokenizer(here / TOKENIZER_FILE)
        self.cfg = ChunkingConfig.load(here / CHUNKING_FILE)

    def _one(self, request):
        text = pb_utils.get_input_tensor_by_name(request, CHUNKER_INPUT).as_numpy()
        if text.size != 1:
            raise ChunkingError(f"{CHUNKER_INPUT} must hold exactly one document (got {text.size})")
        raw = text.reshape(-1)[0]
        data = raw if isinstance(raw, bytes) else str(raw).encode("utf-8")
        self.large_input |= len(data) > LARGE_INPUT_BYTES
        chunks = chunk_text(decode_utf8(data, self.cfg.max_bytes), self.tokenizer, self.cfg)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(INPUT_IDS, chunks.input_ids),
                pb_utils.Tensor(ATTENTION_MASK, chunks.attention_mask),
                pb_utils.Tensor(CHUNK_SPANS, chunks.spans),
                pb_utils.Tensor(NUM_CHUNKS, np.array([chunks.num_chunks], dtype=np.int32)),
                pb_utils.Tensor(TOTAL_CHUNKS, np.array([chunks.total_chunks], dtype=np.int32)),
            ]
        )

    def execute(self, requests):
        responses = []
        self.large_input = False
        for request in requests:
            try:
                responses.append(self._one(request))
            except ChunkingError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
            except Exception as exc:  # never let one document take the others down
                error = pb_utils.TritonError(
                    f"chunker failed: {exc}", pb_utils.TritonError.INTERNAL
                )
                responses.append(pb_utils.InferenceResponse(error=error))
        if self.large_input:
            release_memory()
        return responses


# After a huge document (even a refused one) the tokenizer's heap stays grown: a chunker
# went from ~30 MB to ~357 MB after hostile 50 MB inputs; malloc_trim gave it back.
LARGE_INPUT_BYTES = 1 << 20


try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    _LIBC = None


def release_memory():
    """Give glibc's freed heap back (a no-op cost under jemalloc, which purges itself)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
