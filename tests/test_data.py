"""The kernel-docs corpus builder on a miniature package, the readers, and bad data."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import build_linux_doc_deb

from longdoc import data
from longdoc.data import DataError

FIXTURE = Path(__file__).parent / "fixtures" / "kernel_docs" / "Documentation"


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    """A real .deb in the layout of linux-doc-6.1, built from the fixture tree."""
    files = {
        f"Documentation/{src.relative_to(FIXTURE)}.gz": gzip.compress(src.read_bytes(), mtime=0)
        for src in sorted(FIXTURE.rglob("*.rst"))
    }
    return build_linux_doc_deb(tmp_path_factory.mktemp("pkg"), files)


def test_corpus_builder_labels_cleans_dedups_and_splits(deb, tmp_path):
    manifest = data.build_kernel_docs(tmp_path / "corpus", deb, min_docs=3)
    assert manifest["labels"] == {"hwmon": 4, "networking": 4, "sound": 4}
    dropped = manifest["dropped"]
    assert dropped["duplicate"] == 1 and dropped["index_page"] == 1
    assert dropped["folder_devicetree"] == 1 and dropped["folder_translations"] == 1
    assert dropped["top_level_page"] == 1 and dropped["small_label_docs"] == 1
    texts = {}
    for split in data.SPLITS:
        folder = tmp_path / "corpus" / split
        if folder.is_dir():
            for e in data.read_folder(folder):
                texts[e.id] = e.text
                assert data.split_of(_original_path(e.id)) == split
    assert sum(manifest["splits"].values()) == len(texts) == 12
    joined = "\n".join(texts.values())
    for leak in ("SPDX", "Documentation/", ":doc:", ":ref:", ".. _it87_notes", "hwmon_sysfs"):
        assert leak not in joined
    assert "the sysfs interface" in joined  # a role's title stays, its target goes
    # deterministic: the same package gives the same manifest checksum and files
    again = data.build_kernel_docs(tmp_path / "again", deb, min_docs=3)
    assert again["checksum"] == manifest["checksum"]
    listing = (tmp_path / "corpus" / "documents.tsv").read_text().splitlines()
    assert listing[0] == "split\tlabel\tpath\tsha256" and len(listing) == 13


def _original_path(doc_id: str) -> str:
    # <label>/<path with / as __>.txt -> the path under Documentation/
    return doc_id.split("/", 1)[1][: -len(".txt")].replace("__", "/") + ".rst"


def test_cli_builds_the_corpus(deb, tmp_path):
    from longdoc.cli import main

    assert (
        main(
            [
                "data",
                "kernel-docs",
                "--output",
                str(tmp_path / "c"),
                "--deb",
                str(deb),
                "--min-docs",
                "3",
            ]
        )
        == 0
    )
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["documents"] == 12


def _examples():
    return [("a b c " * 20, "x"), ("d e f " * 20, "y"), ('g, h "i"\nj', "x")]


def test_readers_agree(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "label": lab}) for t, lab in _examples()))
    csv_path = tmp_path / "d.csv"
    import csv

    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "text"])
        for t, lab in _examples():
            writer.writerow([lab, t])
    folder = tmp_path / "folder"
    for i, (t, lab) in enumerate(_examples()):
        (folder / lab).mkdir(parents=True, exist_ok=True)
        (folder / lab / f"{i}.txt").write_text(t)
    for path in (jsonl, csv_path, folder):
        got = sorted((e.text, e.label) for e in data.read_dataset(path))
        assert got == sorted(_examples()), path


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jsonl", b"", "the file is empty"),
        ("empty.csv", b"  \n", "the file is empty"),
        ("bad.jsonl", b'{"text": "caf\xe9", "label": "x"}\n', "not valid UTF-8"),
        ("bad.csv", b"text,label\ncaf\xe9,x\n", "not valid UTF-8"),
        ("nolabel.jsonl", b'{"text": "words"}\n', "missing or empty 'label'"),
        ("blank.jsonl", b'{"text": "  ", "label": "x"}\n', "empty or whitespace only"),
        ("header.csv", b"body,label\nwords,x\n", "'text' and 'label' columns"),
    ],
)
def test_bad_files_name_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        data.read_dataset(path)
    assert str(path) in str(info.value)


def test_bad_text_files_in_a_folder_name_the_file(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "ok.txt").write_text("fine words")
    bad = tmp_path / "x" / "bad.txt"
    bad.write_bytes(b"\xff\xfe broken")
    with pytest.raises(DataError, match="not valid UTF-8") as info:
        data.read_dataset(tmp_path)
    assert str(bad) in str(info.value)
    bad.write_bytes(b"")
    with pytest.raises(DataError, match="empty") as info:
        data.read_dataset(tmp_path)
    assert str(bad) in str(info.value)


def test_a_label_with_one_document_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [("one two", "x"), ("three four", "x"), ("five six", "lonely")]
    path.write_text("\n".join(json.dumps({"text": t, "label": lab}) for t, lab in rows) + "\n")
    examples = data.read_dataset(path)
    with pytest.raises(DataError, match="'lonely' has only one document") as info:
        data.check_training_labels(examples, str(path))
    assert f"{path}:3" in str(info.value)

    from longdoc.cli import main

    out = str(tmp_path / "out")
    assert main(["train", "--train", str(path), "--baseline", "tfidf", "--output", out]) == 2


def test_unknown_label_names_the_file(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"text": "words", "label": "zebra"}) + "\n")
    with pytest.raises(DataError, match="'zebra' is not one the model knows") as info:
        data.check_known_labels(data.read_dataset(path), ["x", "y"])
    assert f"{path}:1" in str(info.value)


def test_clean_rst_removes_label_giveaways():
    text = (
        ".. SPDX-License-Identifier: GPL-2.0\n\n.. _anchor-name:\n\nSee "
        ":doc:`/admin-guide/foo` and :ref:`the bar page <bar-target>` in "
        "Documentation/admin-guide/foo.rst.\n.. include:: ../disclaimer.rst\n"
    )
    cleaned = data.clean_rst(text)
    assert cleaned == "See  and the bar page in\n"  # the path took its full stop along


# --------------------------------------------------------------------------- multi-label


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def test_multi_label_jsonl_and_csv_read_alike(tmp_path):
    rows = [
        {"id": "a", "text": "one two", "labels": ["net", "bpf", "net"]},
        {"id": "b", "text": "three four", "labels": ["sound"]},
        {"id": "c", "text": "five six", "labels": ["bpf", "sound"]},
        {"id": "d", "text": "seven", "labels": ["net"]},
    ]
    jsonl = _write_jsonl(tmp_path / "d.jsonl", rows)
    csv_path = tmp_path / "d.csv"
    csv_path.write_text(
        "id,text,labels\na,one two,net|bpf|net\nb,three four, sound \n"
        "c,five six,bpf|sound\nd,seven,net\n"
    )
    for path in (jsonl, csv_path):
        examples = data.read_dataset(path)
        assert [(e.id, e.labels, e.label) for e in examples] == [
            ("a", ("bpf", "net"), "bpf|net"),  # duplicates collapsed, sorted
            ("b", ("sound",), "sound"),
            ("c", ("bpf", "sound"), "bpf|sound"),
            ("d", ("net",), "net"),
        ], path
        assert data.problem_of(examples) == "multi-label"
        assert examples[0].label_set == ("bpf", "net")
        assert data.check_training_labels(examples, str(path)) == ["bpf", "net", "sound"]
        assert data.read_dataset(path, problem="multi-label") == examples


@pytest.mark.parametrize(
    "rows, line, message",
    [
        ([{"text": "a", "label": "x"}, {"text": "b", "labels": ["x"]}], 2, "multi-label .*line 1"),
        (
            [{"text": "a", "labels": ["x"]}, {"text": "b", "label": "x"}],
            2,
            "single-label .*line 1",
        ),
        ([{"text": "a", "labels": ["x"]}, {"text": "b"}], 2, "missing or empty 'label'"),
        ([{"text": "a", "labels": []}], 1, "'labels' is empty"),
        ([{"text": "a", "labels": "x"}], 1, "'labels' must be a list"),
        ([{"text": "a", "labels": ["x", " "]}], 1, "missing or empty label"),
        ([{"text": "a", "labels": ["x|y"]}], 1, "contains '\\|'"),
        ([{"text": "a", "label": "x", "labels": ["x"]}], 1, "not both"),
    ],
)
def test_bad_multi_label_rows_name_file_and_line(tmp_path, rows, line, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=message) as info:
        data.read_dataset(path)
    assert f"{path}:{line}:" in str(info.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ("text,label,labels\na,x,x\n", "both 'label' and 'labels'"),
        ("text,labels\na,x\nb, \n", "bad.csv:3: empty 'labels'"),
        ("text,labels\na,x||y\n", "bad.csv:2: 'labels' holds a missing or empty label"),
    ],
)
def test_bad_multi_label_csv(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        data.read_dataset(path)


def test_the_problem_asked_for_must_match_the_data(tmp_path):
    single = _write_jsonl(tmp_path / "single.jsonl", [{"text": "a", "label": "x"}])
    multi = _write_jsonl(tmp_path / "multi.jsonl", [{"text": "a", "labels": ["x"]}])
    assert data.read_dataset(single, problem="single-label")[0].labels == ()
    with pytest.raises(DataError, match="single-label data .* the problem is multi-label") as info:
        data.read_dataset(single, problem="multi-label")
    assert str(single) in str(info.value)
    with pytest.raises(DataError, match="multi-label data .* the problem is single-label"):
        data.read_dataset(multi, problem="single-label")
    with pytest.raises(ValueError, match="problem must be one of"):
        data.read_dataset(multi, problem="multilabel")


def test_multi_label_training_and_known_labels(tmp_path):
    rows = [
        {"text": "a", "labels": ["x", "y"]},
        {"text": "b", "labels": ["x"]},
        {"text": "c", "labels": ["y", "z"]},
    ]
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    examples = data.read_dataset(path)
    with pytest.raises(DataError, match="'z' has only one document") as info:
        data.check_training_labels(examples, str(path))
    assert f"{path}:3" in str(info.value)
    one = _write_jsonl(tmp_path / "one.jsonl", [{"text": "a", "labels": ["x"]}] * 2)
    with pytest.raises(DataError, match="needs at least two labels"):
        data.check_training_labels(data.read_dataset(one), str(one))
    test = _write_jsonl(tmp_path / "test.jsonl", [rows[1], {"text": "d", "labels": ["x", "zebra"]}])
    with pytest.raises(DataError, match="'zebra' is not one the model knows") as info:
        data.check_known_labels(data.read_dataset(test), ["x", "y", "z"])
    assert f"{test}:2" in str(info.value)
    data.check_known_labels(examples, ["x", "y", "z"])


def test_data_hash_single_label_unchanged_and_multi_label_counts_labels():
    single = [
        data.Example("a", "alpha beta", "x", "f:1"),
        data.Example("b", "gamma delta", "y", "f:2"),
        data.Example("c", "eps", "x", "f:3"),
    ]
    # the hash the code gave before multi-label existed (caches and records depend on it)
    assert data.data_hash(single) == (
        "c406fce4f87fcc3e21bb41f8000150c4be4d4989905a6e3805c4a02838914bc5"
    )
    multi = [data.Example("a", "alpha beta", "x|y", "f:1", ("x", "y"))]
    other = [data.Example("a", "alpha beta", "x|z", "f:1", ("x", "z"))]
    lookalike = [data.Example("a", "alpha beta", "x|y", "f:1")]  # single-label "x|y"
    hashes = {data.data_hash(rows) for rows in (multi, other, lookalike)}
    assert len(hashes) == 3
