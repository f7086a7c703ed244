"""The test layers hold by construction: the unit layer starts no server, exports no real
model (conftest.py's guard), and tests using a server or export fixture are `integration`."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import INTEGRATION_FIXTURES, LayerError, starts_a_server


def test_server_command_lines_are_recognised():
    assert starts_a_server([sys.executable, "-m", "longdoc.cli", "serve", "--repository", "r"])
    assert starts_a_server(["/opt/venv/bin/longdoc", "serve"])
    assert starts_a_server(["/usr/local/bin/tritonserver", "--model-repository", "r"])
    assert not starts_a_server([sys.executable, "-m", "longdoc.cli", "classify", "x.txt"])
    assert not starts_a_server(["nginx", "-t"])
    assert not starts_a_server([sys.executable, "-m", "longdoc.cli", "serve", "--help"])


def test_a_unit_test_cannot_start_a_server():
    with pytest.raises(LayerError, match="starts a server but is not marked integration"):
        subprocess.Popen([sys.executable, "-m", "longdoc.cli", "serve", "--repository", "x"])
    # other commands run as usual
    done = subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True, text=True)
    assert done.stdout.strip() == "1"


def test_a_unit_test_cannot_export_a_real_model(tmp_path):
    pipeline = pytest.importorskip("longdoc.export.pipeline")
    spec = pipeline.ExportSpec(output=tmp_path / "repo", preset="bert-base-uncased")
    with pytest.raises(LayerError, match="exports preset:bert-base-uncased"):
        pipeline.run(spec)
    assert not (tmp_path / "repo" / "encoder" / "1" / "model.onnx").exists()


def test_server_and_export_fixtures_mark_their_users(request):
    assert {"serve", "export_repo", "classifier_checkpoint"} <= INTEGRATION_FIXTURES
    users = [
        item
        for item in request.session.items
        if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    ]
    assert all(item.get_closest_marker("integration") for item in users)
