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
CHUNKING = [
    "--max-length",
    "128",
    "--overlap",
    "32",
    "--max-chunks",
    "8",
    "--overflow",
    "head_tail",
]


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

    argv = [
        "train",
        "--train",
        str(dataset["train"]),
        "--validation",
        str(dataset["validation"]),
        "--preset",
        "tiny",
        "--head",
        head,
        *CHUNKING,
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--cache-dir",
        str(dataset["cache"]),
        "--no-progress",
        "--output",
        str(output),
        *extra,
    ]
    assert main(argv) == 0
    return json.loads((output / "training.json").read_text())


# (head, frozen?) — every head once; two of them end to end.
CASES = [("logits-mean", True), ("logits-max", False), ("mean-pool", True), ("transformer", False)]


@pytest.mark.parametrize(
    "head, frozen", CASES, ids=[f"{h}-{'frozen' if f else 'e2e'}" for h, f in CASES]
)
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
        "pytorch": evaluate(
            dataset["test"],
            checkpoint=tmp_path / "ckpt",
            use_cache=False,
            progress=False,
            plot=False,
        ),
        "onnxruntime": evaluate(dataset["test"], repository=repo, progress=False, plot=False),
    }
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
        assert [p["predicted"] for p in rep["predictions"]] == [
            p["predicted"] for p in reference["predictions"]
        ], name
        logits = np.array([p["logits"] for p in rep["predictions"]])
        np.testing.assert_allclose(logits, ref_logits, atol=1e-4, err_msg=name)
        assert rep["accuracy"] == reference["accuracy"]
    assert max(p["num_chunks"] for p in reports["server"]["predictions"]) > 1


def test_feature_cache_is_rebuilt_when_encoder_chunking_or_documents_change(dataset, tmp_path):
    from longdoc.checkpoint import materialize_preset

    cache = tmp_path / "cache"
    examples = data.read_dataset(dataset["validation"])
    enc_a = materialize_preset("tiny", 0, cache)
    enc_b = materialize_preset("tiny", 1, cache)
    cfg = ChunkingConfig(max_length=128, overlap=32, max_chunks=8, overflow="head_tail")
    computed: list[str] = []

    def get(examples, encoder, chunking):
        return features.compute_features(
            examples, encoder, chunking, cache_dir=cache, progress=False, log=computed.append
        )

    first = get(examples, enc_a, cfg)
    assert len(computed) == 1
    again = get(examples, enc_a, cfg)
    assert len(computed) == 1 and again.key == first.key  # from the cache
    np.testing.assert_array_equal(again.mean, first.mean)
    other_encoder = get(examples, enc_b, cfg)
    other_chunking = get(
        examples,
        enc_a,
        ChunkingConfig(max_length=128, overlap=0, max_chunks=8, overflow="head_tail"),
    )
    edited = [data.Example(e.id, e.text + " edited", e.label, e.source) for e in examples]
    other_data = get(edited, enc_a, cfg)
    assert len(computed) == 4  # edited documents are encoded again
    keys = {first.key, other_encoder.key, other_chunking.key}
    assert len(keys) == 3 and other_data.key == first.key  # documents are found by content
    # the same documents under other ids and labels, in batches (as `evaluate` sends
    # them), or a subsample: nothing is encoded again
    renamed = [data.Example(str(i), e.text, "", "") for i, e in enumerate(examples)]
    for start in range(0, len(renamed), 4):
        part = get(renamed[start : start + 4], enc_a, cfg)
        np.testing.assert_array_equal(
            part.mean,
            first.mean[first.offsets[start] : first.offsets[min(start + 4, len(examples))]],
        )
    assert len(computed) == 4
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

    from longdoc.checkpoint import load_checkpoint, materialize_preset
    from longdoc.chunking import chunk_text, load_tokenizer
    from longdoc.features import feature_chunking, select_features
    from longdoc.reference import encode_chunks

    cache = tmp_path / "cache"
    encoder = materialize_preset("tiny", 0, cache)
    examples = data.read_dataset(dataset["test"])
    wanted = ChunkingConfig(max_length=128, overlap=32, max_chunks=2, overflow="head_tail")
    feats = features.compute_features(
        examples, encoder, feature_chunking(wanted, "chunks"), cache_dir=cache, progress=False
    )
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
    extra = [
        "--amp",
        "bf16",
        "--gradient-checkpointing",
        "--train-windows",
        "2",
        "--grad-accum",
        "2",
        "--max-steps",
        "2",
        "--seed",
        "5",
    ]
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
    train_cli(
        dataset,
        "mean-pool",
        tmp_path / "warm",
        "--init-from",
        str(tmp_path / "frozen"),
        "--max-steps",
        "1",
        "--encoder-lr",
        "0",
        "--lr",
        "0",
    )
    from safetensors.numpy import load_file

    a = load_file(tmp_path / "frozen" / "head.safetensors")
    b = load_file(tmp_path / "warm" / "head.safetensors")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-7)


def test_fit_keeps_the_best_epoch_and_stops_after_patience():
    """The one loop both trainers run: best validation epoch restored, patience honoured,
    a spent step budget ends the run."""
    from longdoc.training.fit import Epoch, fit

    scores = iter([0.5, 0.8, 0.7, 0.6, 0.9])  # epoch 2 is best; 3 and 4 are stale
    state = {"epoch": 0}

    def run_epoch(epoch: int) -> Epoch:
        state["epoch"] = epoch
        return Epoch([1.0 / epoch], epoch)

    def validate() -> dict:
        f1 = next(scores)
        return {"accuracy": f1, "macro_f1": f1}

    logged: list[str] = []
    history = fit(
        run_epoch,
        epochs=5,
        patience=2,
        get_state=lambda: dict(state),
        set_state=state.update,
        validate=validate,
        log=logged.append,
    )
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert [r["epoch"] for r in history if r.get("best")] == [1, 2]
    assert state["epoch"] == 2 and "early stopping" in logged[-1]
    budget = fit(
        lambda e: Epoch([1.0], e, stop=e == 2),
        epochs=5,
        patience=1,
        get_state=dict,
        set_state=lambda s: None,
        log=lambda *_: None,
    )
    assert len(budget) == 2  # no validation: the lowest training loss, no early stopping


def _train_argv(dataset, output: Path, *extra: str, cache: Path | None = None) -> list[str]:
    """`longdoc train` with no optimisation flag (the defaults under test)."""
    return [
        "train",
        "--train",
        str(dataset["train"]),
        "--preset",
        "tiny",
        *CHUNKING,
        "--cache-dir",
        str(cache or dataset["cache"]),
        "--output",
        str(output),
        *extra,
    ]


def test_defaults_per_regime_and_a_held_out_validation_slice(dataset, tmp_path):
    """No optimisation flag and no --validation: a head on cached vectors gets the frozen
    defaults, a stratified slice of --train scores its epochs, and training.json says so;
    end to end gets the fine-tuning schedule; a flag given is not derived."""
    from longdoc.cli import main

    out = tmp_path / "frozen"
    assert main(_train_argv(dataset, out, "--freeze-encoder", "--no-progress")) == 0
    record = json.loads((out / "training.json").read_text())
    assert record["choices"]["derived"] == {"lr": 1e-2, "epochs": 60, "patience": 10}
    assert record["config"]["epochs"] == 60 and record["config"]["lr"] == 1e-2
    held = record["choices"]["validation"]
    assert held["source"] == "held out of --train" and held["documents"] == 3  # 1 per label
    assert record["data"]["train"]["documents"] == 9
    assert all("validation_macro_f1" in row for row in record["history"])
    assert record["best"]["epoch"] == record["best_epoch"]

    out = tmp_path / "e2e"
    argv = _train_argv(dataset, out, "--lr", "5e-4", "--max-steps", "3", "--no-progress")
    assert main([*argv, "--validation", str(dataset["validation"])]) == 0
    record = json.loads((out / "training.json").read_text())
    assert record["choices"]["derived"] == {"epochs": 3, "patience": 2}
    assert record["choices"]["validation"] == {"source": "--validation"}
    assert record["config"]["lr"] == 5e-4 and record["config"]["encoder_lr"] == 3e-5
    assert record["schedule"]["total_steps"] == 3 and record["schedule"]["warmup_steps"] == 1


def test_regime_defaults_and_help_shows_every_default(capsys):
    from longdoc.cli import main
    from longdoc.training.config import TrainConfig, derive_defaults

    cfg = TrainConfig(train=Path("t"), output=Path("o"), head="transformer", freeze_encoder=True)
    assert derive_defaults(cfg) == {"lr": 1e-3, "epochs": 60, "patience": 10}
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "60 for a head on cached vectors" in text and "3 end to end" in text
    assert "(default: 16)" in text and "(default: 0.15)" in text and "(default: 0.1)" in text


def test_stratified_holdout_keeps_every_label_in_training():
    from longdoc.training.common import stratified_holdout

    labels = ["a"] * 10 + ["b"] * 5 + ["c"] * 2 + ["d"]
    examples = [data.Example(str(i), "x", label, "") for i, label in enumerate(labels)]
    train, held = stratified_holdout(examples, 0.15, 0)
    held_labels = sorted(labels[i] for i in held)
    assert held_labels == ["a", "a", "b", "c"]
    assert sorted({labels[i] for i in train}) == ["a", "b", "c", "d"]
    assert sorted([*train, *held]) == list(range(len(labels)))
    again, _ = stratified_holdout(examples, 0.15, 0)
    np.testing.assert_array_equal(train, again)


def test_one_feature_cache_serves_every_cap(dataset, tmp_path, monkeypatch):
    """The cache key ignores the cap: a capped run on a fresh cache encodes only the windows
    it reads, an uncapped run fills the rest, and any cap after it encodes nothing."""
    from longdoc.checkpoint import materialize_preset

    cache = tmp_path / "cache"
    encoder = materialize_preset("tiny", 0, cache)
    examples = data.read_dataset(dataset["train"])
    calls = []
    real = features.make_engine

    def counting(*args, **kwargs):
        engine = real(*args, **kwargs)
        return lambda ids: calls.append(len(ids)) or engine(ids)

    monkeypatch.setattr(features, "make_engine", counting)

    def get(**cap):
        chunking = ChunkingConfig(max_length=128, overlap=32, **cap)
        return features.compute_features(
            examples, encoder, chunking, cache_dir=cache, progress=False, log=lambda *_: None
        )

    first = get(max_chunks=1, overflow="head")
    assert first.computed == len(calls) == len(examples)  # one window per document
    whole = get()
    total = int(whole.offsets[-1])
    assert total > 2 * len(examples) and whole.computed == total - len(examples)
    assert whole.key == first.key and whole.done.all()
    for cap in ({"max_chunks": 2, "overflow": "head_tail"}, {"max_chunks": 1, "overflow": "head"}):
        assert get(**cap).computed == 0
    assert len(calls) == total


def test_a_capped_run_after_an_uncapped_one_computes_nothing(dataset, tmp_path):
    from longdoc.cli import main

    cache = tmp_path / "cache"
    common = ["--freeze-encoder", "--epochs", "1", "--no-progress"]
    assert (
        main(_train_argv(dataset, tmp_path / "all", *common, "--max-chunks", "0", cache=cache)) == 0
    )
    uncapped = json.loads((tmp_path / "all" / "training.json").read_text())
    assert uncapped["feature_windows_computed"] > 0
    capped_argv = _train_argv(
        dataset, tmp_path / "first", *common, "--max-chunks", "1", "--overflow", "head", cache=cache
    )
    assert main(capped_argv) == 0
    capped = json.loads((tmp_path / "first" / "training.json").read_text())
    assert capped["feature_windows_computed"] == 0
    assert capped["feature_cache"] == uncapped["feature_cache"]


def test_progress_bars_count_what_is_done(dataset, tmp_path, monkeypatch):
    """The feature bar starts at 0 (it began at -13/115 with a TqdmWarning) and ends at its
    total; an epoch bar's count is the batches done whenever its loss is shown (it stayed
    at 0/8 while the loss changed)."""
    import warnings

    import tqdm as tqdm_module

    bars = []

    class Recording(tqdm_module.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.counts, self.at_postfix = [self.n], []
            bars.append(self)

        def update(self, n=1):
            result = super().update(n)
            self.counts.append(self.n)
            return result

        def set_postfix(self, *args, **kwargs):
            self.at_postfix.append(self.n)
            return super().set_postfix(*args, **kwargs)

    monkeypatch.setattr(tqdm_module, "tqdm", Recording)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tqdm_module.TqdmWarning)
        argv = _train_argv(
            dataset,
            tmp_path / "m",
            "--freeze-encoder",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            cache=tmp_path / "cache",
        )
        from longdoc.cli import main

        assert main(argv) == 0
    feature_bars = [b for b in bars if b.desc.startswith("features")]
    epoch_bars = [b for b in bars if b.desc.startswith("epoch")]
    assert feature_bars and len(epoch_bars) == 2
    for bar in feature_bars + epoch_bars:
        assert min(bar.counts) >= 0 and bar.counts[0] == 0, bar.desc
        assert bar.counts[-1] == bar.total, bar.desc
    for bar in epoch_bars:
        assert bar.at_postfix == list(range(1, bar.total + 1)), bar.desc
