"""`longdoc train` on a tiny model: every head, trained -> exported -> served -> evaluated,
with served logits equal to the trained model's; the feature cache and its keys; the
end-to-end code path (autocast, gradient checkpointing, window sampling) on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from longdoc import data, features
from longdoc.chunking import ChunkingConfig
from longdoc.corpus import document
from longdoc.evaluate import evaluate

LABELS = ("alpha", "beta", "gamma")
# Short windows keep a tiny model fast and still give documents of several windows.
CHUNKING = ["--max-length", "128", "--overlap", "32", "--max-chunks", "8", "--overflow",
            "head_tail"]  # fmt: skip


def write_split(path: Path, count: int, seed: int) -> Path:
    """Real prose in folder-per-label layout; lengths 40-900 words (1-10+ windows)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        label = LABELS[i % len(LABELS)]
        folder = path / label
        folder.mkdir(parents=True, exist_ok=True)
        words = int(rng.integers(40, 900))
        (folder / f"doc{i:03d}.txt").write_text(document(words, seed=seed * 1000 + i))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("data")
    return {
        "train": write_split(root / "train", 12, 1),
        "validation": write_split(root / "validation", 6, 2),
        "test": write_split(root / "test", 6, 3),
        "cache": root / "cache",
    }


def train_cli(dataset, head: str, output: Path, *extra: str) -> dict:
    from longdoc.cli import main

    argv = ["train", "--train", str(dataset["train"]), "--validation",
            str(dataset["validation"]), "--preset", "tiny", "--head", head, *CHUNKING,
            "--epochs", "2", "--batch-size", "4", "--cache-dir", str(dataset["cache"]),
            "--no-progress", "--output", str(output), *extra]  # fmt: skip
    assert main(argv) == 0
    return json.loads((output / "training.json").read_text())


# (head, frozen?) — every head once; two of them end to end.
CASES = [("logits-mean", True), ("logits-max", False), ("mean-pool", True),
         ("transformer", False)]  # fmt: skip


@pytest.mark.parametrize("head, frozen", CASES, ids=[f"{h}-{'frozen' if f else 'e2e'}"
                                                     for h, f in CASES])  # fmt: skip
def test_train_export_serve_evaluate(dataset, tmp_path, serve, head, frozen):
    from longdoc.export.pipeline import ExportSpec, run

    extra = ["--freeze-encoder"] if frozen else ["--train-windows", "2", "--grad-accum", "2"]
    record = train_cli(dataset, head, tmp_path / "ckpt", *extra)
    assert record["kind"] == ("frozen" if frozen else "end-to-end")
    assert record["chunking"]["max_length"] == 128 and len(record["history"]) >= 1
    assert (tmp_path / "ckpt" / "training.png").is_file()
    spec = json.loads((tmp_path / "ckpt" / "head.json").read_text())
    assert spec["head"] == head and spec["chunking"]["overlap"] == 32

    # export needs no chunking flag: the checkpoint carries it
    repo = tmp_path / "repo"
    report = run(ExportSpec(output=repo, checkpoint=tmp_path / "ckpt"), log=lambda *_: None)
    assert report["chunking"]["max_length"] == 128 and report["head"] == head

    reports = {
        "pytorch": evaluate(dataset["test"], checkpoint=tmp_path / "ckpt", use_cache=False,
                            progress=False, plot=False),
        "onnxruntime": evaluate(dataset["test"], repository=repo, progress=False, plot=False),
    }  # fmt: skip
    if frozen:
        reports["cache"] = evaluate(
            dataset["test"],
            checkpoint=tmp_path / "ckpt",
            cache_dir=dataset["cache"],
            progress=False,
            plot=False,
        )
    served = serve(repo)
    reports["server"] = evaluate(dataset["test"], url=served.grpc_url, output=tmp_path / "r.json")
    assert (tmp_path / "r.png").is_file()
    reference = reports["pytorch"]
    ref_logits = np.array([p["logits"] for p in reference["predictions"]])
    for name, rep in reports.items():
        assert {"accuracy", "macro_f1", "documents", "by_length"} <= set(rep), name
        assert rep["labels"] == list(LABELS)
        assert [p["predicted"] for p in rep["predictions"]] == \
            [p["predicted"] for p in reference["predictions"]], name  # fmt: skip
        logits = np.array([p["logits"] for p in rep["predictions"]])
        np.testing.assert_allclose(logits, ref_logits, atol=1e-4, err_msg=name)
        assert rep["accuracy"] == reference["accuracy"]
    assert max(p["num_chunks"] for p in reports["server"]["predictions"]) > 1


def test_feature_cache_is_rebuilt_when_encoder_chunking_or_data_change(dataset, tmp_path):
    from longdoc.train import materialize_preset

    cache = tmp_path / "cache"
    examples = data.read_dataset(dataset["validation"])
    enc_a = materialize_preset("tiny", 0, cache)
    enc_b = materialize_preset("tiny", 1, cache)
    cfg = ChunkingConfig(max_length=128, overlap=32, max_chunks=8, overflow="head_tail")
    computed: list[str] = []

    def get(examples, encoder, chunking):
        return features.compute_features(examples, encoder, chunking, cache_dir=cache,
                                         progress=False, log=computed.append)  # fmt: skip

    first = get(examples, enc_a, cfg)
    assert len(computed) == 1
    again = get(examples, enc_a, cfg)
    assert len(computed) == 1 and again.key == first.key  # from the cache
    np.testing.assert_array_equal(again.mean, first.mean)
    other_encoder = get(examples, enc_b, cfg)
    other_chunking = get(examples, enc_a, ChunkingConfig(max_length=128, overlap=0, max_chunks=8,
                                                         overflow="head_tail"))  # fmt: skip
    edited = [data.Example(e.id, e.text + " edited", e.label, e.source) for e in examples]
    other_data = get(edited, enc_a, cfg)
    assert len(computed) == 4
    keys = {first.key, other_encoder.key, other_chunking.key, other_data.key}
    assert len(keys) == 4
    assert not np.allclose(other_encoder.mean, first.mean)
    # the encoder's weights, not its path, are the key: a changed file is a new entry
    weights = enc_a / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1
    weights.write_bytes(bytes(blob))
    get(examples, enc_a, cfg)
    assert len(computed) == 5


def test_cached_windows_equal_the_reference_encoder(dataset, tmp_path):
    """Cached vectors are the served encoder's vectors, and the windows a smaller max_chunks
    or truncation selects from the cache are the ones the chunker would cut."""
    import torch

    from longdoc.checkpoint import load_checkpoint
    from longdoc.chunking import chunk_text, load_tokenizer
    from longdoc.reference import encode_chunks
    from longdoc.train import feature_chunking, materialize_preset, select_features

    cache = tmp_path / "cache"
    encoder = materialize_preset("tiny", 0, cache)
    examples = data.read_dataset(dataset["test"])
    wanted = ChunkingConfig(max_length=128, overlap=32, max_chunks=2, overflow="head_tail")
    feats = features.compute_features(examples, encoder, feature_chunking(wanted, "chunks"),
                                      cache_dir=cache, progress=False)  # fmt: skip
    selected = select_features(feats, examples, wanted, "chunks", "mean")
    model = load_checkpoint(encoder, "mean-pool", random_head=True, chunking=wanted)
    tokenizer = load_tokenizer(model.tokenizer_path)
    for e, vectors in zip(examples, selected, strict=True):
        with torch.inference_mode():
            ref = encode_chunks(model, chunk_text(e.text, tokenizer, wanted)).numpy()
        np.testing.assert_allclose(vectors, ref, atol=1e-4)
    with pytest.raises(data.DataError, match="max_chunks"):
        strict = ChunkingConfig(max_length=128, overlap=32, max_chunks=1, overflow="error")
        select_features(feats, examples, strict, "chunks", "mean")


def test_head_tail_window():
    ids = np.arange(1000)
    window = features.head_tail_window(ids, 510)
    assert len(window) == 510
    np.testing.assert_array_equal(window[:128], np.arange(128))
    np.testing.assert_array_equal(window[128:], np.arange(1000 - 382, 1000))
    np.testing.assert_array_equal(features.head_tail_window(ids[:300], 510), ids[:300])


def test_preset_tiny_end_to_end_code_path(dataset, tmp_path):
    """The GPU recipe's branches (autocast, gradient checkpointing, window sampling, gradient
    accumulation, max steps) run on CPU with the tiny preset; seeded runs repeat exactly."""
    extra = ["--amp", "bf16", "--gradient-checkpointing", "--train-windows", "2",
             "--grad-accum", "2", "--max-steps", "2", "--seed", "5"]  # fmt: skip
    first = train_cli(dataset, "mean-pool", tmp_path / "a", *extra)
    assert first["amp"] == "bf16" and first["gradient_checkpointing"] is True
    assert first["steps"] == 2 and first["windows_per_s"] > 0
    assert first["windows_per_step"] <= 4 * 2 * 2  # batch 4, K=2, accumulation 2
    second = train_cli(dataset, "mean-pool", tmp_path / "b", *extra)
    assert first["history"][0]["train_loss"] == second["history"][0]["train_loss"]
    from safetensors.numpy import load_file

    a = load_file(tmp_path / "a" / "head.safetensors")
    b = load_file(tmp_path / "b" / "head.safetensors")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_tfidf_baseline(dataset, tmp_path):
    record = train_cli(dataset, "mean-pool", tmp_path / "tfidf", "--baseline", "tfidf")
    assert record["kind"] == "tfidf"
    report = evaluate(dataset["test"], checkpoint=tmp_path / "tfidf", progress=False, plot=False)
    assert report["documents"] == 6 and 0.0 <= report["accuracy"] <= 1.0


def test_end_to_end_warm_start_from_a_frozen_head(dataset, tmp_path):
    """--init-from: end to end starts from the head a frozen run trained (linear probe, then
    fine-tune); with no optimizer step the head is exactly the frozen one."""
    train_cli(dataset, "mean-pool", tmp_path / "frozen", "--freeze-encoder")
    train_cli(dataset, "mean-pool", tmp_path / "warm", "--init-from", str(tmp_path / "frozen"),
              "--max-steps", "1", "--encoder-lr", "0", "--lr", "0")  # fmt: skip
    from safetensors.numpy import load_file

    a = load_file(tmp_path / "frozen" / "head.safetensors")
    b = load_file(tmp_path / "warm" / "head.safetensors")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-7)
