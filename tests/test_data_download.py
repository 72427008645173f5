"""``ser data download`` against a local HTTP server on 127.0.0.1 standing in for the
publishers (never the internet; ``tests.support.publishers``).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from ser.cli import main
from ser.datatools.download import (
    MARKER,
    ChecksumError,
    DownloadError,
    RemoteFile,
    SourceUnreachable,
    download_corpus,
    fetch,
    unpack,
)
from ser.datatools.sources import SOURCES
from tests.support.fakes import make_emodb, make_ravdess, make_tess, write_bytes
from tests.support.publishers import closed_port_url, md5, publisher, serve_zenodo, zip_tree


@pytest.fixture
def server():
    with publisher() as httpd:
        yield httpd


@pytest.fixture
def ravdess_zip(tmp_path: Path) -> bytes:
    make_ravdess(tmp_path / "made", actors=(1, 2), emotions=("neutral", "angry"), ext=".wav")
    return zip_tree(
        tmp_path / "made" / "ravdess", tmp_path / "ravdess.zip", "Audio_Speech_Actors_01-24/", True
    )


RAVDESS_FILES = 6  # 2 actors x (neutral normal + angry normal/strong)


def download(name: str, root: Path, source, **kw):
    lines: list[str] = []
    result = download_corpus(name, root, source=source, progress=False, log=lines.append, **kw)
    return result, lines


# ------------------------------------------------------------------------ tests
def test_ravdess_downloads_verifies_unpacks_and_prints_licence(server, ravdess_zip, tmp_path):
    source = serve_zenodo(server, ravdess_zip)
    result, lines = download("ravdess", tmp_path / "data", source)

    folder = tmp_path / "data" / "ravdess"
    assert result.usable == RAVDESS_FILES and result.skipped == 0 and result.speakers == 2
    # The wrapper folder and the macOS junk are gone: the layout the reader expects.
    assert (folder / "Actor_01" / "03-01-01-01-01-01-01.wav").is_file()
    assert not list(folder.rglob("._*")) and not (folder / "__MACOSX").exists()
    assert (folder / MARKER).is_file()
    assert not list((tmp_path / "data" / ".downloads").iterdir())  # archive removed
    assert any("size and MD5 verified" in line for line in lines)
    assert any("CC BY-NC-SA 4.0" in line and "Livingstone" in line for line in lines)


def test_truncated_transfer_resumes_in_the_same_run(server, ravdess_zip, tmp_path):
    source = serve_zenodo(server, ravdess_zip)
    path = f"/records/1188976/files/{source.filename}/content"
    cut = len(ravdess_zip) // 3
    server.state.truncate_once[path] = cut

    result, lines = download("ravdess", tmp_path / "data", source)

    assert result.usable == RAVDESS_FILES
    ranges = [r for p, r in server.state.requests if p == path]
    assert ranges == [None, f"bytes={cut}-"]
    assert any(f"interrupted at {cut:,} of {len(ravdess_zip):,} bytes" in x for x in lines)
    assert any(f"resuming at {cut:,} bytes" in line for line in lines)
    # Bytes already received are not fetched again.
    assert server.state.bytes_sent == len(ravdess_zip) + len(
        server.state.routes["/api/records/1188976"]
    )


def test_partial_file_left_by_an_earlier_run_resumes(server, ravdess_zip, tmp_path):
    source = serve_zenodo(server, ravdess_zip)
    downloads = tmp_path / "data" / ".downloads"
    kept = len(ravdess_zip) - 1000
    write_bytes(downloads / f"{source.filename}.part", ravdess_zip[:kept])

    result, _ = download("ravdess", tmp_path / "data", source)

    assert result.usable == RAVDESS_FILES
    path = f"/records/1188976/files/{source.filename}/content"
    assert [r for p, r in server.state.requests if p == path] == [f"bytes={kept}-"]


def test_interrupted_download_keeps_partial_file_and_says_how_to_resume(server, tmp_path):
    body = bytes(range(256)) * 64
    server.state.routes["/f.zip"] = body
    server.state.truncate_once["/f.zip"] = 1000
    dest = tmp_path / "f.zip"
    with pytest.raises(DownloadError, match="run the same command again to resume") as err:
        fetch(RemoteFile(server.base + "/f.zip", "f.zip"), dest, retries=0, progress=False)
    assert "interrupted at 1,000 of 16,384 bytes" in str(err.value)
    assert (tmp_path / "f.zip.part").stat().st_size == 1000 and not dest.exists()
    # The next call picks up where it stopped.
    fetch(RemoteFile(server.base + "/f.zip", "f.zip"), dest, progress=False)
    assert dest.read_bytes() == body and not (tmp_path / "f.zip.part").exists()
    assert server.state.requests[-1] == ("/f.zip", "bytes=1000-")


def test_checksum_mismatch_fails_clearly_and_deletes_the_download(server, ravdess_zip, tmp_path):
    wrong = "0" * 32
    source = serve_zenodo(server, ravdess_zip, published_md5=wrong)
    with pytest.raises(ChecksumError) as err:
        download("ravdess", tmp_path / "data", source)
    message = str(err.value)
    assert source.filename in message and f"publishes {wrong}" in message
    assert f"MD5 is {md5(ravdess_zip)}" in message and "run the same command again" in message
    assert not list((tmp_path / "data" / ".downloads").glob("*"))  # nothing half-trusted kept
    assert not (tmp_path / "data" / "ravdess").exists()


@pytest.mark.parametrize("good", [True, False])
def test_a_known_checksum_per_source_is_enforced(server, tmp_path, good):
    make_emodb(tmp_path / "made", speakers=("03", "08"), emotions=("angry", "sad"))
    write_bytes(tmp_path / "made" / "emodb" / "erklaerung.txt", b"about the corpus")
    archive = zip_tree(tmp_path / "made" / "emodb", tmp_path / "download.zip")
    server.state.routes["/download/download.zip"] = archive
    known = md5(archive) if good else md5(archive + b"x")
    source = replace(
        SOURCES.get("emodb"),
        url=server.base + "/download/download.zip",
        md5=known,
        size=len(archive),
    )
    if good:
        result, lines = download("emodb", tmp_path / "data", source)
        assert (
            result.usable == 4 and (tmp_path / "data" / "emodb" / "wav" / "03a01Wa.wav").is_file()
        )
        assert any("size and MD5 verified" in line for line in lines)
        assert any("free for research" in line for line in lines)
    else:
        with pytest.raises(ChecksumError, match=f"publishes {known}"):
            download("emodb", tmp_path / "data", source)


def test_emodb_without_published_checksum_checks_length_and_says_so(server, tmp_path):
    make_emodb(tmp_path / "made", speakers=("03",), emotions=("angry", "sad", "boredom"))
    server.state.routes["/download.zip"] = zip_tree(tmp_path / "made" / "emodb", tmp_path / "a.zip")
    source = replace(SOURCES.get("emodb"), url=server.base + "/download.zip")
    result, lines = download("emodb", tmp_path / "data", source)
    assert result.usable == 3
    assert any("publisher gives no checksum" in line for line in lines)
    assert any("length verified" in line for line in lines)


def test_server_that_ignores_ranges_restarts_cleanly(server, ravdess_zip, tmp_path):
    source = serve_zenodo(server, ravdess_zip)
    server.state.ranges = False
    server.state.truncate_once[f"/records/1188976/files/{source.filename}/content"] = 5000
    result, lines = download("ravdess", tmp_path / "data", source)
    assert result.usable == RAVDESS_FILES
    assert any("does not resume downloads; starting again" in line for line in lines)


def test_unreachable_source_says_where_to_download_by_hand(tmp_path):
    source = replace(SOURCES.get("emodb"), url=closed_port_url() + "/download.zip")
    with pytest.raises(SourceUnreachable) as err:
        download("emodb", tmp_path / "data", source)
    message = str(err.value)
    assert "cannot reach" in message and "http://emodb.bilderbar.info/download/" in message
    assert (
        f"ser data download emodb --archive <the downloaded zip> --to {tmp_path / 'data'}"
        in message
    )
    assert f"{tmp_path / 'data'}/emodb/wav/03a01Fa.wav" in message


def test_unreachable_zenodo_api_falls_back_to_direct_link_without_checksum(
    server, ravdess_zip, tmp_path
):
    server.state.routes["/direct.zip"] = ravdess_zip
    source = replace(
        SOURCES.get("ravdess"),
        url=closed_port_url() + "/api/records/1188976",
        fallback_url=server.base + "/direct.zip",
    )
    result, lines = download("ravdess", tmp_path / "data", source)
    assert result.usable == RAVDESS_FILES
    assert any("could not read the published checksum" in line for line in lines)


def test_every_official_source_is_offline_friendly(tmp_path):
    """The real sources name their pages, licences and a by-hand layout (no network used)."""
    from ser.datatools.sources import manual_instructions

    assert SOURCES.names() == ["emodb", "ravdess", "tess"]
    assert "1188976" in SOURCES.get("ravdess").url
    assert "10.5683/SP2/E8H2MF" in SOURCES.get("tess").url
    assert SOURCES.get("emodb").url == "http://emodb.bilderbar.info/download/download.zip"
    for name in SOURCES:
        source = SOURCES.get(name)
        text = manual_instructions(source, "data")
        assert source.page in text and f"data/{source.example}" in text
        assert "Licence" in source.licence or "free for research" in source.licence


def dataverse_listing(server, files: dict[str, bytes], wrong_md5: str | None = None) -> bytes:
    entries = []
    for i, (relative, data) in enumerate(sorted(files.items()), start=100):
        folder, _, name = relative.rpartition("/")
        server.state.routes[f"/api/access/datafile/{i}"] = data
        checksum = "f" * 32 if relative == wrong_md5 else md5(data)
        entries.append(
            {
                "label": name,
                "directoryLabel": f"TESS Toronto emotional speech set data/{folder}",
                "restricted": False,
                "dataFile": {
                    "id": i,
                    "filename": name,
                    "filesize": len(data),
                    "checksum": {"type": "MD5", "value": checksum},
                },
            }
        )
    return json.dumps({"status": "OK", "data": {"latestVersion": {"files": entries}}}).encode()


def test_tess_from_dataverse_checks_every_file_and_fetches_only_what_is_missing(server, tmp_path):
    made = make_tess(tmp_path / "made", words=("back",), emotions=("angry", "sad", "ps"))
    files = {f"{p.parent.name}/{p.name}": p.read_bytes() for p in made}
    broken = "YAF_sad/YAF_back_sad.wav"
    api = "/api/datasets/:persistentId/"
    server.state.routes[api] = dataverse_listing(server, files, wrong_md5=broken)
    source = replace(SOURCES.get("tess"), url=server.base + api + "?persistentId=doi:x")

    with pytest.raises(DownloadError) as err:
        download("tess", tmp_path / "data", source, workers=2)
    assert "1 of 6 files failed" in str(err.value) and "YAF_back_sad.wav" in str(err.value)
    assert "run the same command again to fetch the rest" in str(err.value)
    folder = tmp_path / "data" / "tess"
    assert len(list(folder.rglob("*.wav"))) == 5 and not (folder / MARKER).exists()

    server.state.routes[api] = dataverse_listing(server, files)  # the source is fixed
    server.state.requests.clear()
    result, _ = download("tess", tmp_path / "data", source, workers=2)
    assert result.usable == 6 and result.speakers == 2
    assert (folder / "OAF_angry" / "OAF_back_angry.wav").is_file()
    fetched = [p for p, _ in server.state.requests if p.startswith("/api/access/datafile/")]
    assert len(fetched) == 1  # the five verified files were not downloaded again


def test_already_downloaded_corpus_is_left_alone(server, ravdess_zip, tmp_path):
    source = serve_zenodo(server, ravdess_zip)
    download("ravdess", tmp_path / "data", source)
    server.state.requests.clear()
    result, lines = download("ravdess", tmp_path / "data", source)
    assert result.already_there and result.usable == RAVDESS_FILES
    assert server.state.requests == [] and "already downloaded" in lines[0]


def test_archive_downloaded_by_hand_is_unpacked_without_network(ravdess_zip, tmp_path):
    source = replace(SOURCES.get("ravdess"), url=closed_port_url() + "/never")
    result, _ = download("ravdess", tmp_path / "data", source, archive=tmp_path / "ravdess.zip")
    assert result.usable == RAVDESS_FILES


def test_dataverse_zip_downloaded_by_hand_gets_the_reader_layout(tmp_path):
    make_tess(tmp_path / "made", words=("back",), emotions=("angry", "sad"))
    archive = tmp_path / "dataverse_files.zip"
    zip_tree(tmp_path / "made" / "tess", archive, "TESS Toronto emotional speech set data/")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("MANIFEST.TXT", "files in this archive")
    source = replace(SOURCES.get("tess"), url=closed_port_url() + "/never")
    result, lines = download("tess", tmp_path / "data", source, archive=archive)
    folder = tmp_path / "data" / "tess"
    assert result.usable == 4 and (folder / "OAF_angry" / "OAF_back_angry.wav").is_file()
    assert (folder / "MANIFEST.TXT").is_file()  # kept, at the top
    assert f"unpacked 5 files from dataverse_files.zip into {folder}" in lines


def test_unsafe_or_broken_archives_are_refused_with_the_reason(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("wav/03a01Wa.wav", b"x")
        zf.writestr("../../outside.wav", b"x")
    with pytest.raises(DownloadError, match=r"unsafe path '\.\./\.\./outside\.wav'"):
        unpack(evil, tmp_path / "data" / "emodb", log=lambda _: None)
    assert not (tmp_path / "outside.wav").exists() and not (tmp_path / "data" / "emodb").exists()

    cut = write_bytes(tmp_path / "cut.zip", evil.read_bytes()[:40])
    with pytest.raises(DownloadError, match="cut.zip: not a complete zip archive"):
        unpack(cut, tmp_path / "data" / "emodb", log=lambda _: None)


def test_cli_download_from_a_mirror_with_known_md5(server, tmp_path, capsys):
    make_emodb(tmp_path / "made", speakers=("03",), emotions=("angry",))
    archive = zip_tree(tmp_path / "made" / "emodb", tmp_path / "e.zip")
    server.state.routes["/mirror/emodb.zip"] = archive
    root = tmp_path / "data"
    argv = [
        "data",
        "download",
        "emodb",
        "--to",
        str(root),
        "--url",
        server.base + "/mirror/emodb.zip",
    ]
    assert main([*argv, "--md5", "1" * 32]) == 2
    assert "publishes 11111111111111111111111111111111" in capsys.readouterr().err
    assert main([*argv, "--md5", md5(archive)]) == 0
    out = capsys.readouterr().out
    assert "emodb: 1 usable recordings" in out and "SER_DATA_ROOT" in out


def test_cli_download_offline_exits_nonzero_with_instructions(tmp_path, capsys):
    url = closed_port_url() + "/x.zip"
    code = main(["data", "download", "tess", "--to", str(tmp_path), "--url", url])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach" in err and "https://doi.org/10.5683/SP2/E8H2MF" in err
