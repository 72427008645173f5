"""The walkthrough notebook executes top to bottom on a tiny generated run."""

from __future__ import annotations

from pathlib import Path

import pytest

from ser.training import train
from tests.support import ROOT
from tests.support.fakes import make_emodb
from tests.support.tiny_run import tiny_config

NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"


def test_walkthrough_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    make_emodb(tmp_path / "corpora")
    cfg = tiny_config(tmp_path / "corpora", tmp_path, "[emodb]", **{"train.epochs": "1"})
    run_dir = train(cfg, log=lambda _line: None)["run_dir"]

    monkeypatch.setenv("SER_RUN_DIR", str(run_dir))  # the kernel inherits the environment
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on failure

    outputs = [
        out.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream"
    ]
    text = "".join(outputs)
    assert f"run {Path(run_dir).name}: lstm model" in text
    assert "speaker-independent" in text and "rank  model" in text
    # The generated clips are tones in noise: each is a prediction or, when the speech
    # check finds its pitch too steady for a voice, "no speech".
    assert text.count("predicted ") + text.count(" no speech (voiced") == 5
    images = [
        out
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert len(images) >= 2  # the clip's features and the confusion matrix
