"""longdoc.client: classify documents with a running server (``DocumentClassifierClient``).

The benchmark, which needs onnxruntime and torch for its baselines, is ``longdoc.bench``
(the top-level ``bench/`` folder), so that a client-only install holds none of them.

``longdoc[client]`` (tritonclient, numpy, tqdm) is all this needs: nothing here imports
torch, onnxruntime or tokenizers, and the names below are imported on first use, so
``import longdoc.client`` costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["Classification", "DocumentClassifierClient", "ServerUnavailable"]

if TYPE_CHECKING:  # pragma: no cover
    from longdoc.client.classifier import (
        Classification,
        DocumentClassifierClient,
        ServerUnavailable,
    )


def __getattr__(name: str):
    if name in __all__:
        from longdoc.client import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
