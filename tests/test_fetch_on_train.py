"""``train.py`` / ``ser train`` on a fresh project: the data root defaults to the
project's own ``data/``, and missing corpora are fetched only after their licences are
accepted, from a local HTTP server standing in for the publishers
(``tests.support.publishers``; never the internet).
"""

from __future__ import annotations

import io
import os
import pty
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

import ser.config
from ser import runs
from ser.cli import main
from ser.config import load_config
from ser.datatools import fetch_missing
from ser.datatools.download import MARKER
from ser.datatools.fetch_missing import (
    ACCEPT_ENV,
    CorporaMissing,
    ask_on_terminal,
    ensure_corpora,
    licences_accepted,
)
from ser.datatools.sources import SOURCES, Source
from ser.registry import Registry
from tests.support import ROOT
from tests.support.fakes import make_emodb
from tests.support.publishers import closed_port_url, publisher, zip_tree
from tests.support.tiny_run import tiny_overrides

EMODB_FILES = 4  # 2 speakers x 2 emotions


@pytest.fixture
def server():
    with publisher() as httpd:
        yield httpd


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A fresh project folder (an empty ``data/``) that the package takes as its own,
    with the commands run from another folder and no ``SER_DATA_ROOT`` or acceptance."""
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    monkeypatch.setattr(ser.config, "project_root", lambda: folder)
    monkeypatch.delenv("SER_DATA_ROOT", raising=False)
    monkeypatch.delenv(ACCEPT_ENV, raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return folder


def publish(monkeypatch, server, tmp_path: Path, offline: tuple[str, ...] = ()) -> None:
    """Point the sources the train command uses at ``server``: EMO-DB as a zip (a tiny
    generated corpus), the corpora in ``offline`` at a port where nothing listens."""
    made = tmp_path / "made"
    make_emodb(made, speakers=("03", "08"), emotions=("angry", "sad"))
    server.state.routes["/download/download.zip"] = zip_tree(made / "emodb", tmp_path / "e.zip")
    sources: Registry[Source] = Registry("corpus source")
    for name in SOURCES:
        source = SOURCES.get(name)
        if name == "emodb":
            source = replace(source, url=server.base + "/download/download.zip")
        if name in offline:
            source = replace(source, url=closed_port_url() + "/gone", fallback_url=None)
        sources.register(name)(source)
    monkeypatch.setattr(fetch_missing, "SOURCES", sources)


class Terminal(io.StringIO):
    """Standard input at a terminal, with the user's answer already typed."""

    def isatty(self) -> bool:
        return True


def never_asked(question: str) -> bool:
    raise AssertionError(f"asked {question!r}")


# ----------------------------------------------------------------------- data root
def test_default_data_root_is_the_projects_data_folder_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ser.config.project_root() == ROOT
    assert load_config("lstm.yaml", env={}).data.root == str(ROOT / "data")
    assert load_config(None, env={}).data.root == str(ROOT / "data")
    # A root given by the user keeps its meaning: as written, relative to the current folder.
    assert load_config("lstm.yaml", ["data.root=corpora"], env={}).data.root == "corpora"
    env = {"SER_DATA_ROOT": str(tmp_path / "mine")}
    assert load_config("lstm.yaml", env=env).data.root == str(tmp_path / "mine")
    assert load_config("custom_folders.yaml", env={}).data.root == "data"


def test_installed_package_keeps_its_corpora_in_the_users_data_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(ser.config, "project_root", lambda: None)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    assert ser.config.default_data_root() == tmp_path / "share" / "ser" / "data"


# ------------------------------------------------------------------ end to end
def test_fresh_project_fetches_the_corpus_once_accepted_then_trains(
    project, server, tmp_path, monkeypatch, capsys
):
    publish(monkeypatch, server, tmp_path)
    monkeypatch.setenv(ACCEPT_ENV, "1")
    sets = tiny_overrides(tmp_path, tmp_path / "work", corpora="[emodb]")
    sets = [s for s in sets if not s.startswith("data.root=")]  # the default root
    sets += ["train.confusion_images=false", "evaluation.baselines=[logistic_regression]"]

    code = main(["train", "--config", "base.yaml", *(f"--set={s}" for s in sets)])

    out = capsys.readouterr().out
    assert code == 0
    folder = project / "data" / "emodb"
    assert (folder / MARKER).is_file() and len(list(folder.rglob("*.wav"))) == EMODB_FILES
    assert out.index("free for research") < out.index("emodb: downloading")
    assert f"not under the data root {project / 'data'}: emodb" in out
    assert [p for p, _ in server.state.requests] == ["/download/download.zip"]
    run = tmp_path / "work" / "checkpoints" / "best"
    assert (run / runs.SUMMARY).is_file()
    saved = yaml.safe_load((run / runs.CONFIG).read_text(encoding="utf-8"))
    assert saved["data"]["root"] == str(project / "data")


def test_ser_data_download_puts_a_corpus_where_training_looks(project, server, tmp_path, capsys):
    make_emodb(tmp_path / "made", speakers=("03",), emotions=("angry",))
    server.state.routes["/mirror.zip"] = zip_tree(tmp_path / "made" / "emodb", tmp_path / "m.zip")

    assert main(["data", "download", "emodb", "--url", server.base + "/mirror.zip"]) == 0

    assert (project / "data" / "emodb" / MARKER).is_file()
    assert "training reads it from there" in capsys.readouterr().out
    assert fetch_missing.missing_corpora(load_config("quick.yaml").data) == []


# ------------------------------------------------------------ refused or offline
def test_no_at_the_prompt_prints_the_manual_steps_and_downloads_nothing(
    project, server, tmp_path, monkeypatch, capsys
):
    publish(monkeypatch, server, tmp_path)
    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))

    code = main(["train", "--config", "quick.yaml"])

    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    assert "Download emodb (about 40 MB)" in captured.out and "[y/N]" in captured.out
    assert "emodb not downloaded: the licences were not accepted" in captured.err
    assert f"ser data download emodb --archive <the downloaded zip> --to {project / 'data'}" in (
        captured.err
    )
    assert "SER_DATA_ROOT" in captured.err and "--accept-licences" in captured.err
    assert server.state.requests == []
    assert sorted(p.name for p in (project / "data").iterdir()) == []


def test_without_a_terminal_or_acceptance_nothing_is_downloaded(
    project, server, tmp_path, monkeypatch, capsys
):
    publish(monkeypatch, server, tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # piped: nobody to ask

    code = main(["train", "--config", "quick.yaml"])

    err = capsys.readouterr().err
    assert code == 2 and server.state.requests == []
    assert "no terminal to accept the licences at" in err
    assert f"{ACCEPT_ENV}=1" in err and "To get emodb by hand" in err


def test_offline_after_acceptance_prints_the_manual_steps_and_exits_2(
    project, server, tmp_path, monkeypatch, capsys
):
    publish(monkeypatch, server, tmp_path, offline=("emodb",))

    code = main(["train", "--config", "quick.yaml", "--accept-licences"])

    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "cannot reach" in err and "To get emodb by hand" in err
    assert "emodb --archive <the downloaded zip>" in err
    assert "could not fetch emodb, and training needs every corpus in data.corpora" in err
    assert not (project / "data" / "emodb" / MARKER).exists()


# ----------------------------------------------------------------- fetch rules
@pytest.mark.parametrize("subset", [True, False])
def test_a_corpus_that_cannot_be_fetched_is_left_out_only_of_a_chosen_subset(
    project, server, tmp_path, monkeypatch, subset
):
    publish(monkeypatch, server, tmp_path, offline=("tess",))
    cfg = load_config("base.yaml", ["data.corpora=[emodb, tess]"])
    lines: list[str] = []

    if subset:
        kept = ensure_corpora(cfg, accepted=True, subset=True, ask=never_asked, log=lines.append)
        assert kept.data.corpora == ["emodb"] and kept.data.root == cfg.data.root
        assert any("training without tess" in line for line in lines)
    else:
        with pytest.raises(CorporaMissing) as err:
            ensure_corpora(cfg, accepted=True, subset=False, ask=never_asked, log=lines.append)
        assert "could not fetch tess" in str(err.value)
        assert "--set data.corpora=[emodb]" in str(err.value)
    # The corpus that could be fetched is there either way.
    assert (project / "data" / "emodb" / MARKER).is_file()


def test_ser_data_root_still_wins(project, server, tmp_path, monkeypatch):
    publish(monkeypatch, server, tmp_path)
    make_emodb(tmp_path / "mine", speakers=("03",), emotions=("angry", "sad"))
    monkeypatch.setenv("SER_DATA_ROOT", str(tmp_path / "mine"))
    cfg = load_config("quick.yaml")
    assert cfg.data.root == str(tmp_path / "mine")
    assert ensure_corpora(cfg, accepted=False, subset=False, ask=never_asked) is cfg
    assert server.state.requests == [] and not list((project / "data").iterdir())


def test_a_download_left_unfinished_is_fetched_again(project, server, tmp_path, monkeypatch):
    publish(monkeypatch, server, tmp_path)
    # A Dataverse corpus arrives file by file: some files and a .part, no marker yet.
    partial = project / "data" / "emodb" / "wav"
    make_emodb(project / "data", speakers=("03",), emotions=("angry",))
    (partial / "03a01Ta.wav.part").write_bytes(b"RIFF")
    cfg = load_config("quick.yaml")
    assert [s.name for s in fetch_missing.missing_corpora(cfg.data)] == ["emodb"]
    ensure_corpora(cfg, accepted=True, subset=False, ask=never_asked, log=lambda _: None)
    assert fetch_missing.missing_corpora(cfg.data) == []


def test_acceptance_is_the_flag_or_the_environment_variable():
    assert licences_accepted(True, {})
    assert all(licences_accepted(False, {ACCEPT_ENV: v}) for v in ("1", "yes", "TRUE"))
    assert not any(licences_accepted(False, {ACCEPT_ENV: v}) for v in ("", "0", "no"))
    assert not licences_accepted(False, {})


@pytest.mark.parametrize(("typed", "answer"), [("y\n", True), ("yes\n", True), ("\n", False)])
def test_the_question_is_put_only_at_a_real_terminal(typed, answer):
    leader, follower = pty.openpty()
    try:
        os.write(leader, typed.encode())
        with open(follower, encoding="utf-8", closefd=False) as stdin:
            shown = io.StringIO()
            assert ask_on_terminal("Download? [y/N] ", stdin=stdin, out=shown) is answer
            assert shown.getvalue() == "Download? [y/N] "
    finally:
        os.close(leader)
        os.close(follower)
    assert ask_on_terminal("Download? [y/N] ", stdin=io.StringIO("y\n")) is None


# --------------------------------------------------------------- a real clone
def test_train_py_in_a_fresh_clone_stops_with_the_manual_steps(tmp_path):
    """The project's own files copied to an empty folder, ``train.py`` run from another
    folder without a terminal: it names the data root inside the clone, the missing
    corpora and their licences, and exits 2 without a traceback or a download."""
    clone = tmp_path / "clone"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "ser", clone / "ser", symlinks=True, ignore=ignore)
    shutil.copytree(ROOT / "configs", clone / "configs", ignore=ignore)
    for name in ("pyproject.toml", "train.py", "data/README.md"):
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, clone / name)
    env = {k: v for k, v in os.environ.items() if k not in ("SER_DATA_ROOT", ACCEPT_ENV)}
    env["PYTHONPATH"] = str(clone)
    done = subprocess.run(
        [sys.executable, str(clone / "train.py")],
        check=False,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"not under the data root {clone / 'data'}: ravdess, tess, emodb" in done.stdout
    assert "CC BY-NC-SA 4.0" in done.stdout and "CC BY-NC-ND 4.0" in done.stdout
    assert "no terminal to accept the licences at" in done.stderr
    assert sorted(p.name for p in (clone / "data").iterdir()) == ["README.md"]
