"""Metrics against values computed by hand; evaluation errors that name the file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from longdoc import metrics
from longdoc.data import DataError

# true / predicted over 3 classes, worked out by hand below
Y_TRUE = [0, 0, 1, 1, 2]
Y_PRED = [0, 1, 1, 1, 0]


def test_classification_report_by_hand():
    report = metrics.classification_report(Y_TRUE, Y_PRED, ["a", "b", "c"])
    assert report["documents"] == 5
    assert report["accuracy"] == pytest.approx(3 / 5)
    # a: tp 1, predicted 2 (docs 0, 4), support 2 -> P 1/2, R 1/2, F1 1/2
    # b: tp 2, predicted 3, support 2 -> P 2/3, R 1, F1 0.8
    # c: tp 0, predicted 0, support 1 -> 0, 0, 0
    a, b, c = (report["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == (0.5, 0.5, 0.5, 2)
    assert b["precision"] == pytest.approx(2 / 3) and b["recall"] == 1.0
    assert b["f1"] == pytest.approx(0.8)
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == (0, 0, 0, 1)
    assert report["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_macro_f1_ignores_classes_absent_from_the_data():
    report = metrics.classification_report([0, 0], [0, 1], ["a", "b", "c"])
    # a: P 1, R 1/2, F1 2/3; b and c have no documents -> left out of the mean
    assert report["macro_f1"] == pytest.approx(2 / 3)


def test_length_buckets_by_hand():
    assert [metrics.length_bucket(n) for n in (1, 512, 513, 2048, 2049)] == [
        "up to 512",
        "up to 512",
        "513-2048",
        "513-2048",
        "over 2048",
    ]
    tokens = [100, 600, 3000, 5000, 512]
    out = metrics.by_length(Y_TRUE, Y_PRED, tokens, ["a", "b", "c"])
    assert out["up to 512"] == {"documents": 2, "accuracy": 0.5, "macro_f1": pytest.approx(1 / 3)}
    assert out["513-2048"]["documents"] == 1 and out["513-2048"]["accuracy"] == 0.0
    assert out["over 2048"]["documents"] == 2 and out["over 2048"]["accuracy"] == 1.0


def test_mcnemar_exact_by_hand():
    a = [1, 1, 1, 0, 1, 1]
    b = [0, 0, 0, 1, 1, 1]
    result = metrics.mcnemar(a, b)
    # discordant: 3 only a, 1 only b; p = 2 * P(X <= 1), X ~ Bin(4, 1/2) = 2 * 5/16
    assert (result["only_a_correct"], result["only_b_correct"]) == (3, 1)
    assert result["p_value"] == pytest.approx(10 / 16)
    assert metrics.mcnemar([1, 0], [1, 0])["p_value"] == 1.0


def test_bootstrap_difference():
    a = np.array([1] * 80 + [0] * 20)
    b = np.array([1] * 50 + [0] * 50)
    result = metrics.bootstrap_difference(a, b, samples=2000)
    assert result["difference"] == pytest.approx(0.3)
    low, high = result["ci95"]
    assert low < 0.3 < high and low > 0
    assert result["p_value"] < 0.01


def test_confusion_plot(tmp_path):
    metrics.plot_confusion([[1, 1], [0, 2]], ["a", "b"], tmp_path / "m.png", "t")
    assert (tmp_path / "m.png").stat().st_size > 1000


def test_unknown_label_at_evaluation_names_the_file(tmp_path, capsys):
    """Evaluation refuses a label the model does not know, before computing anything."""
    from longdoc.evaluate import evaluate
    from longdoc.training import TrainConfig, train

    train_file = tmp_path / "train.jsonl"
    rows = [
        ("alpha words here", "x"),
        ("more alpha words", "x"),
        ("beta text", "y"),
        ("beta again", "y"),
    ]
    train_file.write_text("\n".join(json.dumps({"text": t, "label": lab}) for t, lab in rows))
    train(
        TrainConfig(train=train_file, output=tmp_path / "m", baseline="tfidf"), log=lambda *_: None
    )
    test_file = tmp_path / "test.jsonl"
    test_file.write_text(
        json.dumps({"text": "x words", "label": "x"})
        + "\n"
        + json.dumps({"text": "what", "label": "zebra"})
        + "\n"
    )
    with pytest.raises(DataError, match="'zebra' is not one the model knows") as info:
        evaluate(test_file, checkpoint=tmp_path / "m", progress=False)
    assert f"{test_file}:2" in str(info.value)
    from longdoc.cli import main

    argv = ["evaluate", "--checkpoint", str(tmp_path / "m"), "--data", str(test_file)]
    assert main([*argv, "--output", str(tmp_path / "r")]) == 2  # unusable input
    assert "longdoc evaluate: error:" in capsys.readouterr().err


def test_evaluate_writes_report_into_the_output_folder(tmp_path, capsys):
    """`--output DIR` is a folder (report.json, report.png), as in every command; a TF-IDF
    checkpoint goes through the same classifier interface as the others."""
    from longdoc.classifiers import open_classifier
    from longdoc.cli import main
    from longdoc.results import Classifier
    from longdoc.training import TrainConfig, train

    data = tmp_path / "d.jsonl"
    rows = [
        ("alpha words here", "x"),
        ("more alpha words", "x"),
        ("beta text", "y"),
        ("beta again", "y"),
    ]
    data.write_text("\n".join(json.dumps({"text": t, "label": lab}) for t, lab in rows))
    train(TrainConfig(train=data, output=tmp_path / "m", baseline="tfidf"), log=lambda *_: None)
    classifier = open_classifier(checkpoint=tmp_path / "m")
    assert isinstance(classifier, Classifier) and classifier.labels == ["x", "y"]
    (result,) = classifier.classify(["alpha words"])
    assert result.num_chunks == 1 and classifier.labels[result.index] == "x"
    out = tmp_path / "eval"
    argv = ["evaluate", "--checkpoint", str(tmp_path / "m"), "--data", str(data), "--no-progress"]
    assert main([*argv, "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["documents"] == 4 and (out / "report.png").is_file()
    assert str(out / "report.json") in capsys.readouterr().out


def test_evaluation_imports_nothing_from_training():
    import subprocess
    import sys

    code = (
        "import sys, longdoc.evaluate, longdoc.accuracy_tables; "
        "print(sorted(m for m in sys.modules if m.startswith('longdoc.train')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_accuracy_tables_by_hand(tmp_path, capsys):
    """ACCURACY.md's table and paired tests from report files (the McNemar case above)."""
    from longdoc.accuracy_tables import main

    for row, correct in (("a", [1, 1, 1, 0, 1, 1]), ("b", [0, 0, 0, 1, 1, 1])):
        folder = tmp_path / row / "seed0"
        folder.mkdir(parents=True)
        report = {
            "accuracy": sum(correct) / 6,
            "macro_f1": 0.5,
            "by_length": {"over 2048": {"accuracy": 0.5, "documents": 2}},
            "predictions": [{"label": "x", "predicted": "x" if c else "y"} for c in correct],
        }
        (folder / "test.json").write_text(json.dumps(report))
        (folder / "training.json").write_text(json.dumps({"seconds": 12.0}))
    assert main([str(tmp_path), "a", "b", "--pair", "a", "b"]) == 0
    out = capsys.readouterr().out
    assert "| a | 1 | 0.833 | 0.500 | 0.500 (2) | 12 |" in out
    assert "McNemar 3 vs 1 discordant, p = 0.625" in out


def test_tfidf_checkpoint_is_data_never_code(tmp_path):
    """The TF-IDF baseline is saved as arrays (`tfidf.npz`, read with allow_pickle=False):
    a file that would run code when unpickled is refused, and nothing runs."""
    import pickle

    import numpy as np
    import pytest

    from longdoc.classifiers import open_classifier
    from longdoc.tfidf import TfidfClassifier
    from longdoc.training import TrainConfig, train

    data = tmp_path / "d.jsonl"
    rows = [("alpha words here", "x"), ("more alpha words", "x"), ("beta text", "y")] * 2
    data.write_text("\n".join(json.dumps({"text": t, "label": lab}) for t, lab in rows))
    train(TrainConfig(train=data, output=tmp_path / "m", baseline="tfidf"), log=lambda *_: None)
    saved = tmp_path / "m" / "tfidf.npz"
    with np.load(saved, allow_pickle=False) as arrays:  # arrays only: loads without pickle
        assert {"terms", "idf", "coef", "intercept", "labels"} <= set(arrays.files)
    assert open_classifier(checkpoint=tmp_path / "m").classify(["beta"])[0].index == 1

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("code ran",))

    evil = tmp_path / "evil"
    evil.mkdir()
    # an object array in the archive needs pickle to load: refused, never executed
    np.savez(evil / "tfidf.npz", format=np.array(1), labels=np.array([Payload()], dtype=object))
    with pytest.raises(ValueError, match="not a TF-IDF baseline file"):
        TfidfClassifier(evil)
    (evil / "tfidf.npz").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match="not a TF-IDF baseline file"):
        TfidfClassifier(evil)
    assert not marker.exists()
