"""`longdoc sweep`: grid parsing, a sweep on the tiny preset end to end (table, CSV, JSON,
plot, features shared across heads, caps and seeds), and its winner exported and served."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from test_train import write_split

from longdoc.training.sweep import DEFAULT_GRID, Point, parse_grid

GRID = [
    "max_length=64,128 overlap=16 head=mean-pool,logits-mean",
    "max_length=128 overlap=16 max_chunks=1 head=mean-pool",
]


def test_grid_words_are_a_product_and_several_grids_a_union(tmp_path):
    points = parse_grid(GRID)
    assert len(points) == 5
    assert Point(max_length=64, overlap=16, head="logits-mean") in points
    capped = Point(max_length=128, overlap=16, max_chunks=1)
    assert capped in points and capped.chunking()["overflow"] == "head_tail"
    assert capped.name() == "mean-pool_128-16_cap1-head_tail"
    assert len(parse_grid([DEFAULT_GRID])) == 6
    spec = tmp_path / "grid.json"
    spec.write_text(
        json.dumps([{"max_length": [256], "overlap": [0, 64]}, {"head": "transformer"}])
    )
    from_file = parse_grid([str(spec)])
    assert [p.overlap for p in from_file] == [0, 64, 128]
    yaml_spec = tmp_path / "grid.yaml"
    yaml_spec.write_text("max_length: [256, 512]\nhead: [mean-pool]\n")
    assert [p.max_length for p in parse_grid([str(yaml_spec)])] == [256, 512]


@pytest.mark.parametrize(
    "bad, message",
    [
        ("size=1", "unknown grid key"),
        ("head=avg", "unknown head"),
        ("max_length", "key=value"),
        ("max_length=128 overlap=200", "overlap"),
    ],
)
def test_bad_grids_fail_before_anything_runs(bad, message):
    with pytest.raises(ValueError, match=message):
        parse_grid([bad])


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> dict:
    """One sweep on the tiny preset without --validation (a held-out slice scores it)."""
    from longdoc.cli import main

    root = tmp_path_factory.mktemp("sweep")
    train = write_split(root / "train", 12, 1)
    out = root / "out"
    argv = [
        "sweep",
        "--train",
        str(train),
        "--preset",
        "tiny",
        "--cache-dir",
        str(root / "cache"),
        "--seeds",
        "0",
        "1",
        "--output",
        str(out),
        "--no-progress",
    ]
    for grid in GRID:
        argv += ["--grid", grid]
    assert main(argv) == 0
    return {"out": out, "root": root, "test": write_split(root / "test", 6, 3)}


def test_sweep_writes_the_table_and_a_trainable_winner(swept):
    out = swept["out"]
    report = json.loads((out / "sweep.json").read_text())
    assert len(report["rows"]) == 5 and len(report["trials"]) == 10
    assert report["validation"] == "held out of --train"
    scores = [r["validation_macro_f1"] for r in report["rows"]]
    assert scores == sorted(scores, reverse=True)
    with (out / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["point"] for r in rows] == [r["point"] for r in report["rows"]]
    assert (out / "sweep.png").stat().st_size > 1000
    # one feature extraction per window placement: heads, caps and seeds after the first
    # trial of a placement encode nothing
    computed = {}
    for t in report["trials"]:
        placement = t["point"].split("_")[1]
        computed.setdefault(placement, []).append(t["feature_windows_computed"])
    for placement, counts in computed.items():
        assert counts[0] > 0 and not any(counts[1:]), (placement, counts)
    winner = report["winner"]
    assert winner["point"] == report["rows"][0]["point"]
    record = json.loads((out / "winner" / "training.json").read_text())
    assert record["config"]["head"] == winner["head"] and record["config"]["seed"] == winner["seed"]
    assert record["choices"]["derived"]["epochs"] == 60
    head = json.loads((out / "winner" / "head.json").read_text())
    assert head["chunking"]["max_length"] == winner["max_length"]
    # trials keep their record, not their weights (unless --keep-trials)
    trial = Path(report["trials"][0]["output"])
    assert (trial / "training.json").is_file() and not (trial / "head.json").exists()


@pytest.mark.integration
def test_sweep_winner_exports_and_serves(swept, tmp_path, serve):
    from longdoc.export.pipeline import ExportSpec, run

    from longdoc.evaluate import evaluate

    repo = tmp_path / "repo"
    run(ExportSpec(output=repo, checkpoint=swept["out"] / "winner"), log=lambda *_: None)
    reference = evaluate(
        swept["test"],
        checkpoint=swept["out"] / "winner",
        use_cache=False,
        progress=False,
        plot=False,
    )
    served = serve(repo)
    report = evaluate(swept["test"], url=served.grpc_url, output=tmp_path / "r.json")
    np.testing.assert_allclose(
        [p["logits"] for p in report["predictions"]],
        [p["logits"] for p in reference["predictions"]],
        atol=1e-4,
    )


def test_a_multilabel_sweep_ranks_by_micro_f1(tmp_path):
    """Multi-label data: the trials record validation micro-F1 and macro-F1 (no accuracy),
    the table and the CSV show them, --metric micro_f1 ranks; accuracy is refused."""
    from test_multilabel_training import write_jsonl

    from longdoc.training.sweep import SweepConfig, run_sweep

    train = write_jsonl(tmp_path / "train.jsonl", 28, 1)
    common = {
        "train": train,
        "grid": ["max_length=128 overlap=16 head=mean-pool,logits-max"],
        "seeds": [0],
        "preset": "tiny",
        "cache_dir": tmp_path / "cache",
        "progress": False,
    }
    logged: list[str] = []
    report = run_sweep(
        SweepConfig(output=tmp_path / "sweep", metric="micro_f1", **common), log=logged.append
    )
    rows = report["rows"]
    assert len(rows) == 2 and "validation_accuracy" not in rows[0]
    scores = [(r["validation_micro_f1"], r["validation_macro_f1"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert "micro-F1" in logged[-1] and "accuracy" not in logged[-1].split("\n")[1]
    with (tmp_path / "sweep" / "sweep.csv").open() as f:
        header = next(csv.reader(f))
    assert "validation_micro_f1" in header and "validation_accuracy" not in header
    winner = json.loads((tmp_path / "sweep" / "winner" / "training.json").read_text())
    assert winner["problem"] == "multi-label" and winner["decision"]["kind"] == "global"
    with pytest.raises(ValueError, match="micro_f1 and macro_f1"):
        run_sweep(SweepConfig(output=tmp_path / "bad", metric="accuracy", **common))
