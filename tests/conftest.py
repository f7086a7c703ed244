"""Shared fixtures: real tokenizer, real MiniLM weights, real text, exported repositories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LABELS = ["contract", "filing", "report"]


@pytest.fixture(scope="session")
def minilm() -> Path:
    from longdoc.checkpoint import minilm_dir

    return minilm_dir()


@pytest.fixture(scope="session")
def tokenizer(minilm):
    from longdoc.chunking import load_tokenizer

    return load_tokenizer(minilm)


@pytest.fixture(scope="session")
def classifier_checkpoint(tmp_path_factory, minilm) -> Path:
    """A BertForSequenceClassification directory: real MiniLM encoder, seeded classifier."""
    from longdoc.checkpoint import make_classifier_checkpoint

    return make_classifier_checkpoint(tmp_path_factory.mktemp("ckpt") / "cls", LABELS, seed=3)


@pytest.fixture(scope="session")
def export_repo(tmp_path_factory):
    """Export once per (source, head, precision, profile) and share across tests."""
    from export.pipeline import ExportSpec, run

    cache: dict = {}

    def make(checkpoint=None, preset=None, head=None, precision="fp32", profile="portable",
             random_head=False, **chunking):  # fmt: skip
        key = (str(checkpoint), preset, head, precision, profile, random_head,
               tuple(sorted(chunking.items())))  # fmt: skip
        if key not in cache:
            out = tmp_path_factory.mktemp("repo")
            spec = ExportSpec(
                output=out, checkpoint=checkpoint, preset=preset, head=head,
                precision=precision, profile=profile, random_head=random_head,
                num_labels=3, chunking=chunking,
            )  # fmt: skip
            cache[key] = (out, run(spec, log=lambda *_: None))
        return cache[key]

    return make
