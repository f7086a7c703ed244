"""The one factory of the classifier interface (``longdoc.results.Classifier``): a
checkpoint, a repository or a running server, each behind ``classify(texts)``.

Apart from ``longdoc.results`` because it reaches every implementation (torch,
onnxruntime); each is imported only when asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longdoc.results import Classifier


def open_classifier(
    *,
    checkpoint: str | Path | None = None,
    repository: str | Path | None = None,
    url: str | None = None,
    **options: Any,
) -> Classifier:
    """The classifier of exactly one source:

    * ``checkpoint``: a TF-IDF baseline directory (``longdoc.tfidf``) or any checkpoint
      ``longdoc export`` reads, in PyTorch (``options``: ``ReferenceClassifier.from_checkpoint``'s);
    * ``repository``: the exported ONNX files in-process (``options``: ``OnnxPipeline``'s);
    * ``url``: a running server (``options``: ``DocumentClassifierClient``'s, i.e.
      ``cli_options.server_kwargs`` without the url, plus ``concurrency``).

    Each import happens only for the source asked for (no torch for a server)."""
    sources = [s for s in (checkpoint, repository, url) if s is not None]
    if len(sources) != 1:
        raise ValueError("give exactly one of checkpoint, repository or url")
    if url is not None:
        from longdoc.client.classifier import ServerClassifier

        return ServerClassifier(url, **options)
    if repository is not None:
        from longdoc.runtime import OnnxPipeline

        return OnnxPipeline(repository, **options)
    from longdoc.tfidf import TfidfClassifier, is_tfidf

    if is_tfidf(checkpoint):
        return TfidfClassifier(checkpoint)
    from longdoc.reference import ReferenceClassifier

    return ReferenceClassifier.from_checkpoint(checkpoint, **options)
