"""Multi-label training and evaluation (issue #20) on tiny models and a toy task: a label
is present when its marker word runs through the document, so a frozen tiny encoder's mean
window vector separates the label sets. Thresholds chosen on validation reach the
checkpoint (``decision.json``) and every classifier decides with them; the metrics are
checked against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from longdoc import metrics
from longdoc.corpus import document
from longdoc.evaluate import evaluate

LABELS = ("finance", "health", "sport")
MARKERS = {"finance": "ledger", "health": "vaccine", "sport": "stadium"}
CHUNKING = ["--max-length", "128", "--overlap", "32"]


def label_set(i: int) -> tuple[str, ...]:
    """Every non-empty subset of the three labels in turn (7 sets)."""
    mask = i % 7 + 1
    return tuple(label for k, label in enumerate(LABELS) if mask >> k & 1)


def toy_text(labels: tuple[str, ...], seed: int) -> str:
    """Prose with each label's marker word woven through it (every 6th word)."""
    words = document(120, seed=seed).split()
    markers = [MARKERS[label] for label in labels]
    out = []
    for i, word in enumerate(words):
        out.append(word)
        if i % 6 == 0:
            out.append(markers[(i // 6) % len(markers)])
    return " ".join(out)


def write_jsonl(path: Path, count: int, seed: int) -> Path:
    with path.open("w") as f:
        for i in range(count):
            labels = label_set(i)
            row = {"id": f"d{seed}-{i}", "text": toy_text(labels, seed * 1000 + i)}
            f.write(json.dumps({**row, "labels": list(labels)}) + "\n")
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("multilabel")
    return {
        "train": write_jsonl(root / "train.jsonl", 42, 1),
        "validation": write_jsonl(root / "validation.jsonl", 14, 2),
        "test": write_jsonl(root / "test.jsonl", 14, 3),
        "cache": root / "cache",
    }


def train_cli(
    toy: dict, output: Path, *extra: str, validation: bool = True, minilm: bool = False
) -> dict:
    """`longdoc train` on the toy data: the tiny preset, or MiniLM (real weights, whose
    frozen window vectors separate the marker words; the random tiny encoder's do not)."""
    from longdoc.cli import main

    argv = [
        "train",
        "--train",
        str(toy["train"]),
        *([] if minilm else ["--preset", "tiny"]),
        *CHUNKING,
        "--batch-size",
        "8",
        "--cache-dir",
        str(toy["cache"]),
        "--no-progress",
        "--output",
        str(output),
        *extra,
    ]
    if validation:
        argv += ["--validation", str(toy["validation"])]
    assert main(argv) == 0
    return json.loads((output / "training.json").read_text())


# --------------------------------------------------------------------------- metrics


def test_multilabel_metrics_by_hand():
    """3 documents, 3 labels (a, b, c):
    truth     {a, b}  {b}     {c}
    predicted {a}     {b, c}  {c}
    cells: tp 3 (a1, b2, c3), fp 1 (c2), fn 1 (b1): micro-F1 = 6 / (6 + 2) = 0.75;
    per label: a P1 R1 F1 1; b P1 R1/2 F1 2/3; c P1/2 R1 F1 2/3: macro-F1 = 7/9;
    exact sets: only the third, subset accuracy 1/3."""
    truth = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=bool)
    predicted = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1]], dtype=bool)
    report = metrics.multilabel_report(truth, predicted, ["a", "b", "c"])
    assert report["documents"] == 3
    assert report["micro_f1"] == pytest.approx(0.75)
    assert report["macro_f1"] == pytest.approx(7 / 9)
    assert report["subset_accuracy"] == pytest.approx(1 / 3)
    assert report["per_label"]["b"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    assert report["per_label"]["c"]["precision"] == pytest.approx(0.5)
    # a label absent from the truth is left out of macro-F1 (its F1 would be 0)
    absent = metrics.multilabel_report(truth[:, :2], predicted[:, :2], ["a", "b"])
    assert absent["macro_f1"] == pytest.approx((1 + 2 / 3) / 2)
    only_ab = metrics.multilabel_report(
        np.c_[truth[:, :2], np.zeros(3, bool)], predicted, ["a", "b", "c"]
    )
    assert only_ab["per_label"]["c"]["support"] == 0
    assert only_ab["macro_f1"] == pytest.approx((1 + 2 / 3) / 2)
    np.testing.assert_array_equal(metrics.exact_match(truth, predicted), [False, False, True])
    buckets = metrics.multilabel_by_length(truth, predicted, [100, 100, 3000], ["a", "b", "c"])
    assert buckets["up to 512"]["documents"] == 2 and buckets["513-2048"]["documents"] == 0
    assert buckets["over 2048"] == {
        "documents": 1,
        "micro_f1": 1.0,
        "macro_f1": 1.0,
        "subset_accuracy": 1.0,
    }
    empty = metrics.multilabel_report(np.zeros((0, 3), bool), np.zeros((0, 3), bool), list("abc"))
    assert empty["documents"] == 0 and empty["micro_f1"] == 0.0


def test_bootstrap_micro_f1_difference():
    truth = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]] * 10, dtype=bool)
    perfect = truth.copy()
    worse = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1]] * 10, dtype=bool)
    result = metrics.bootstrap_micro_f1_difference(truth, perfect, worse, samples=2000)
    assert result["difference"] == pytest.approx(0.25)
    low, high = result["ci95"]
    assert 0 < low <= 0.25 <= high
    assert result["p_value"] < 0.01
    same = metrics.bootstrap_micro_f1_difference(truth, worse, worse, samples=200)
    assert same["difference"] == 0.0 and same["p_value"] == 1.0


def test_accuracy_tables_multilabel_rows(tmp_path, capsys):
    from longdoc.accuracy_tables import main

    def report(predicted):
        rows = [
            {"labels": t, "predicted": p}
            for t, p in zip([["a", "b"], ["b"], ["c"]], predicted, strict=True)
        ]
        truth = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=bool)
        index = {"a": 0, "b": 1, "c": 2}
        pred = np.zeros_like(truth)
        for i, p in enumerate(predicted):
            pred[i, [index[x] for x in p]] = True
        rep = metrics.multilabel_report(truth, pred, ["a", "b", "c"])
        by_length = metrics.multilabel_by_length(truth, pred, [3000] * 3, ["a", "b", "c"])
        return {
            **rep,
            "by_length": by_length,
            "problem": "multi-label",
            "labels": ["a", "b", "c"],
            "predictions": rows,
        }

    for row, predicted in (
        ("good", [["a", "b"], ["b"], ["c"]]),
        ("bad", [["a"], ["b", "c"], ["c"]]),
    ):
        seed = tmp_path / row / "seed0"
        (seed / "test").mkdir(parents=True)
        (seed / "test" / "report.json").write_text(json.dumps(report(predicted)))
        (seed / "training.json").write_text(json.dumps({"seconds": 3}))
    assert main([str(tmp_path), "good", "bad", "--pair", "good", "bad"]) == 0
    out = capsys.readouterr().out
    assert "| row | seeds | micro-F1 | macro-F1 | subset accuracy |" in out
    assert "| good | 1 | 1.000 | 1.000 | 1.000 | 1.000 (3) | 3 |" in out
    assert "| bad | 1 | 0.750 | 0.778 | 0.333 | 0.750 (3) | 3 |" in out
    assert "micro-F1 difference +0.250" in out and "McNemar (exact set) 2 vs 0" in out
    assert "| accuracy |" not in out  # no single-label table without single-label rows


# --------------------------------------------------------------------------- training


def test_multilabel_holdout_keeps_every_label_in_training():
    """Label sets that are all different still give a validation slice: about the fraction
    of each label held out, every label kept in training, seeded."""
    from longdoc.data import Example
    from longdoc.training.common import stratified_holdout

    rng = np.random.default_rng(0)
    names = [f"l{k}" for k in range(8)]
    sets = [tuple(sorted(rng.choice(names, size=3, replace=False))) for _ in range(60)]
    sets += [("rare",), ("l0", "rare")]
    examples = [Example(str(i), "x", "|".join(s), "", s) for i, s in enumerate(sets)]
    train, held = stratified_holdout(examples, 0.2, 0)
    assert sorted([*train, *held]) == list(range(len(sets)))
    assert 6 <= len(held) <= 14  # about 20% of 62, every set unique
    in_train = {label for i in train for label in sets[i]}
    assert in_train == {*names, "rare"}
    for label in in_train:
        total = sum(label in s for s in sets)
        out = sum(label in sets[i] for i in held)
        assert out <= max(round(0.2 * total), 1), label
    again, _ = stratified_holdout(examples, 0.2, 0)
    np.testing.assert_array_equal(train, again)


def test_fit_chooses_multilabel_epochs_by_micro_f1():
    from longdoc.training.fit import Epoch, epoch_line, fit, validation_scores

    scores = iter([(0.5, 0.9), (0.8, 0.1), (0.7, 0.9)])  # (micro, macro): epoch 2 is best
    state = {"epoch": 0}

    def run_epoch(epoch: int) -> Epoch:
        state["epoch"] = epoch
        return Epoch([1.0], epoch)

    def validate() -> dict:
        micro, macro = next(scores)
        return {"micro_f1": micro, "macro_f1": macro}

    history = fit(
        run_epoch,
        epochs=3,
        patience=5,
        get_state=lambda: dict(state),
        set_state=state.update,
        validate=validate,
        log=lambda *_: None,
    )
    assert [r["epoch"] for r in history if r.get("best")] == [1, 2]
    assert state["epoch"] == 2 and "validation_accuracy" not in history[0]
    assert "micro-F1 0.800 macro-F1 0.100" in epoch_line(history[1])
    truth = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=bool)
    predicted = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1]], dtype=bool)
    assert validation_scores(predicted, truth, ["a", "b", "c"]) == pytest.approx(
        {"micro_f1": 0.75, "macro_f1": 7 / 9}
    )


def test_frozen_multilabel_learns_and_its_thresholds_reach_the_checkpoint(toy, tmp_path):
    """Frozen mean-pool over MiniLM on the toy task: well above chance on test documents;
    per-label thresholds chosen on validation are in training.json, decision.json, the
    loaded checkpoint and the evaluation report."""
    from longdoc.checkpoint import load_checkpoint
    from longdoc.decision import load_decision
    from longdoc.evaluate import summary_line

    out = tmp_path / "ckpt"
    record = train_cli(
        toy, out, "--freeze-encoder", "--epochs", "20", "--thresholds", "per-label", minilm=True
    )
    assert record["problem"] == "multi-label" and record["labels"] == list(LABELS)
    assert all({"validation_micro_f1", "validation_macro_f1"} <= set(r) for r in record["history"])
    assert not any("validation_accuracy" in r for r in record["history"])
    decision = record["decision"]
    assert decision["problem"] == "multi-label" and decision["kind"] == "per-label"
    assert decision["chosen"] == "on validation" and len(decision["thresholds"]) == 3
    assert {"micro_f1_global", "micro_f1_per_label"} <= set(decision["chosen_on"])
    assert decision["chosen_on"]["documents"] == 14
    saved = load_decision(out, 3)
    assert list(saved.thresholds) == decision["thresholds"] and saved.kind == "per-label"
    assert load_checkpoint(out).decision == saved

    report = evaluate(
        toy["test"], checkpoint=out, use_cache=False, progress=False, output=tmp_path / "r.json"
    )
    assert list(report)[:4] == ["micro_f1", "macro_f1", "documents", "by_length"]
    keys = {"subset_accuracy", "per_label", "labels", "problem", "thresholds", "predictions"}
    assert keys <= set(report) and "accuracy" not in report
    assert report["problem"] == "multi-label"
    assert report["thresholds"] == {"kind": "per-label", "values": decision["thresholds"]}
    row = report["predictions"][0]
    assert set(row) >= {"id", "labels", "predicted", "logits"} and row["labels"] == ["finance"]
    # chance: every label on every document scores micro-F1 2*24/(2*24+18) = 0.73 here
    assert report["micro_f1"] >= 0.9, report["micro_f1"]
    assert report["subset_accuracy"] >= 0.7, report["subset_accuracy"]
    assert (tmp_path / "r.png").is_file()
    line = summary_line(report)
    assert "micro-F1" in line and "macro-F1" in line and "accuracy 0" not in line
    cached = evaluate(
        toy["test"], checkpoint=out, cache_dir=toy["cache"], progress=False, plot=False
    )
    assert [p["predicted"] for p in cached["predictions"]] == [
        p["predicted"] for p in report["predictions"]
    ]


def test_checkpoint_repository_and_server_decide_the_same(toy, tmp_path, serve):
    """A tiny multi-label model exported (thresholds baked into the aggregator's DECISIONS):
    onnxruntime on the repository and the server decide exactly as PyTorch on the
    checkpoint."""
    from longdoc.export.pipeline import ExportSpec, run

    out = tmp_path / "ckpt"
    train_cli(toy, out, "--freeze-encoder", "--epochs", "3", "--thresholds", "per-label")
    repo = tmp_path / "repo"
    run(ExportSpec(output=repo, checkpoint=out), log=lambda *_: None)
    torch_report = evaluate(
        toy["test"], checkpoint=out, use_cache=False, progress=False, plot=False
    )
    reports = {
        "onnxruntime": evaluate(toy["test"], repository=repo, progress=False, plot=False),
        "server": evaluate(toy["test"], url=serve(repo).grpc_url, progress=False, plot=False),
    }
    assert torch_report["thresholds"]["kind"] == "per-label"
    assert reports["onnxruntime"]["thresholds"] == torch_report["thresholds"]
    assert reports["server"]["thresholds"] == torch_report["thresholds"]
    for name, report in reports.items():
        assert report["problem"] == "multi-label", name
        assert [p["predicted"] for p in report["predictions"]] == [
            p["predicted"] for p in torch_report["predictions"]
        ], name
        assert report["micro_f1"] == torch_report["micro_f1"], name
        np.testing.assert_allclose(
            [p["logits"] for p in report["predictions"]],
            [p["logits"] for p in torch_report["predictions"]],
            atol=1e-4,
            err_msg=name,
        )


def test_problem_single_label_on_label_sets_is_refused(toy, tmp_path, capsys):
    from longdoc.cli import main

    argv = ["train", "--train", str(toy["train"]), "--preset", "tiny", "--problem"]
    argv += ["single-label", "--output", str(tmp_path / "x"), "--no-progress"]
    assert main(argv) == 2
    assert "single-label" in capsys.readouterr().err
    assert not (tmp_path / "x" / "training.json").exists()


def test_without_validation_the_thresholds_are_the_default(toy, tmp_path):
    record = train_cli(
        toy,
        tmp_path / "m",
        "--freeze-encoder",
        "--epochs",
        "1",
        "--validation-fraction",
        "0",
        validation=False,
    )
    assert record["decision"]["kind"] == "default"
    assert record["decision"]["thresholds"] == [0.5, 0.5, 0.5]
    assert record["decision"]["chosen"] == "without validation data"


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "e2e"])
def test_attention_head_trains_multilabel(toy, tmp_path, frozen):
    from longdoc.checkpoint import load_checkpoint

    extra = ["--freeze-encoder"] if frozen else ["--train-windows", "2", "--max-steps", "2"]
    record = train_cli(
        toy,
        tmp_path / "att",
        "--head",
        "attention",
        "--attention-size",
        "16",
        "--per-label-attention",
        "--epochs",
        "1",
        *extra,
    )
    assert record["kind"] == ("frozen" if frozen else "end-to-end")
    assert record["config"]["attention_size"] == 16
    spec = json.loads((tmp_path / "att" / "head.json").read_text())
    assert spec["head"] == "attention"
    assert spec["options"] == {"attention_size": 16, "per_label": True}
    model = load_checkpoint(tmp_path / "att")
    assert model.decision.multi_label and model.aggregator.score.out_features == 3
    report = evaluate(toy["test"], checkpoint=tmp_path / "att", progress=False, plot=False)
    assert report["documents"] == 14 and 0.0 <= report["micro_f1"] <= 1.0


@pytest.mark.parametrize(
    "head, frozen",
    [("logits-max", False), ("logits-mean", True), ("transformer", True)],
    ids=["logits-max-e2e", "logits-mean-frozen", "transformer-frozen"],
)
def test_every_head_trains_multilabel(toy, tmp_path, head, frozen):
    """A sigmoid per label whatever the head (logits-max end to end: the classifier inside
    the BERT model learns each label's window score)."""
    extra = ["--freeze-encoder"] if frozen else ["--train-windows", "2", "--max-steps", "2"]
    record = train_cli(toy, tmp_path / "m", "--head", head, "--epochs", "1", *extra)
    assert record["problem"] == "multi-label" and record["history"][0]["train_loss"] > 0
    assert "validation_micro_f1" in record["history"][0]
    assert (tmp_path / "m" / "decision.json").is_file()
    report = evaluate(toy["test"], checkpoint=tmp_path / "m", progress=False, plot=False)
    assert report["problem"] == "multi-label" and report["thresholds"]["kind"] == "global"


def test_attention_head_trains_single_label(tmp_path):
    """The attention head on single-label data: softmax, argmax, report unchanged."""
    from longdoc.cli import main

    data = tmp_path / "single.jsonl"
    with data.open("w") as f:
        for i in range(12):
            labels = (LABELS[i % 3],)
            f.write(json.dumps({"text": toy_text(labels, i), "label": labels[0]}) + "\n")
    argv = ["train", "--train", str(data), "--preset", "tiny", *CHUNKING, "--head", "attention"]
    argv += ["--freeze-encoder", "--epochs", "2", "--no-progress", "--output", str(tmp_path / "o")]
    argv += ["--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    record = json.loads((tmp_path / "o" / "training.json").read_text())
    assert record["problem"] == "single-label" and record["decision"]["chosen"] == "argmax"
    assert "validation_accuracy" in record["history"][0]
    assert not (tmp_path / "o" / "decision.json").exists()


# --------------------------------------------------------------------------- TF-IDF


def test_tfidf_one_vs_rest_round_trips_without_pickle(toy, tmp_path):
    from longdoc.tfidf import OneVsRest, TfidfClassifier, load_pipeline

    out = tmp_path / "tfidf"
    record = train_cli(toy, out, "--baseline", "tfidf", "--thresholds", "global")
    assert record["kind"] == "tfidf" and record["problem"] == "multi-label"
    assert record["decision"]["kind"] == "global"
    with np.load(out / "tfidf.npz", allow_pickle=False) as saved:
        assert str(saved["problem"]) == "multi-label"
        assert saved["coef"].shape[0] == 3 and saved["intercept"].shape == (3,)
    model, labels = load_pipeline(out / "tfidf.npz")
    assert isinstance(model, OneVsRest) and labels == list(LABELS)
    classifier = TfidfClassifier(out)
    assert classifier.decision.thresholds == tuple(record["decision"]["thresholds"])
    texts = [toy_text(("health",), 7), toy_text(("finance", "sport"), 8)]
    results = classifier.classify(texts)
    for result in results:
        probabilities = classifier.decision.probabilities(result.logits)
        np.testing.assert_allclose(result.probabilities, probabilities, rtol=1e-6)
        np.testing.assert_array_equal(result.decisions, classifier.decision.decide(result.logits))
    assert [results[0].decided, results[1].decided] == [[1], [0, 2]]
    report = evaluate(toy["test"], checkpoint=out, progress=False, plot=False)
    assert report["micro_f1"] >= 0.9 and report["thresholds"]["kind"] == "global"
