"""Where each corpus comes from, what its licence says, and how to get it by hand.

Pure data: ``ser.datatools.download`` resolves a ``Source`` into files to fetch.

Checksums. A download is verified against a size and MD5 only when the publisher
states them; nothing here is a value typed in from memory:

- RAVDESS: the Zenodo record's API lists the archive's size and MD5; they are
  read from it at download time (``kind="zenodo"``).
- TESS: the Dataverse API lists every file's size and MD5; each file is checked
  (``kind="dataverse"``).
- EMO-DB: the TU Berlin site publishes no checksum; only the length the server
  announces is checked (``kind="url"`` with ``md5=None``).

A ``Source`` may also carry a known ``md5``/``size`` (``kind="url"``): the same
checks then run against those values.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from ser.registry import Registry


@dataclass(frozen=True)
class Source:
    """One corpus' official source.

    ``url`` depends on ``kind``: the archive itself (``url``), the record API
    (``zenodo``; ``filename`` is the file key in the record, ``fallback_url`` the
    direct link used when the API cannot be read) or the dataset API
    (``dataverse``; every listed file is fetched). ``folder`` is the corpus folder
    under the data root that the reader expects; ``example`` is one file's path in
    it, shown in the by-hand instructions. ``release_files`` is the number of audio
    files of the official release, for the closing line. ``download_mb`` is the
    rough size of what is fetched, in MB, for messages only (never checked).
    """

    name: str
    title: str
    kind: Literal["url", "zenodo", "dataverse"]
    url: str
    page: str
    filename: str
    folder: str
    example: str
    release_files: int
    licence: str
    fallback_url: str | None = None
    md5: str | None = None
    size: int | None = None
    checksum_note: str = ""
    download_mb: int = 0

    def in_folder(self, folder: str) -> Source:
        """This source unpacked into ``folder`` (a corpus's configured folder name)."""
        example = folder + self.example.removeprefix(self.folder)
        return replace(self, folder=folder, example=example)


SOURCES: Registry[Source] = Registry("corpus source")


def _add(source: Source) -> Source:
    return SOURCES.register(source.name)(source)


RAVDESS = _add(
    Source(
        name="ravdess",
        title="RAVDESS, audio-only speech (Zenodo record 1188976)",
        kind="zenodo",
        url="https://zenodo.org/api/records/1188976",
        fallback_url="https://zenodo.org/records/1188976/files/Audio_Speech_Actors_01-24.zip?download=1",
        page="https://zenodo.org/records/1188976",
        filename="Audio_Speech_Actors_01-24.zip",
        folder="ravdess",
        example="ravdess/Actor_01/03-01-01-01-01-01-01.wav",
        release_files=1440,
        download_mb=210,
        checksum_note="size and MD5 as published in the Zenodo record",
        licence=(
            "RAVDESS: Livingstone, S. R. & Russo, F. A. (2018). The Ryerson Audio-Visual "
            "Database of Emotional Speech and Song (RAVDESS). PLoS ONE 13(5): e0196391, "
            "https://doi.org/10.1371/journal.pone.0196391. Licence: CC BY-NC-SA 4.0 "
            "(attribution, non-commercial, share alike; "
            "https://creativecommons.org/licenses/by-nc-sa/4.0/). Commercial use needs the "
            "authors' permission."
        ),
    )
)

TESS = _add(
    Source(
        name="tess",
        title="TESS, Toronto emotional speech set (University of Toronto Dataverse)",
        kind="dataverse",
        url="https://borealisdata.ca/api/datasets/:persistentId/?persistentId=doi:10.5683/SP2/E8H2MF",
        page="https://doi.org/10.5683/SP2/E8H2MF",
        filename="tess.zip",
        folder="tess",
        example="tess/OAF_angry/OAF_back_angry.wav",
        release_files=2800,
        download_mb=280,
        checksum_note="size and MD5 of every file as published in the Dataverse dataset",
        licence=(
            "TESS: Pichora-Fuller, M. K. & Dupuis, K. (2020). Toronto emotional speech set "
            "(TESS). University of Toronto, Dataverse, https://doi.org/10.5683/SP2/E8H2MF. "
            "Licence: CC BY-NC-ND 4.0 (attribution, non-commercial, no derivatives; "
            "https://creativecommons.org/licenses/by-nc-nd/4.0/)."
        ),
    )
)

EMODB = _add(
    Source(
        name="emodb",
        title="EMO-DB, Berlin database of emotional speech (TU Berlin)",
        kind="url",
        url="http://emodb.bilderbar.info/download/download.zip",
        page="http://emodb.bilderbar.info/download/",
        filename="download.zip",
        folder="emodb",
        example="emodb/wav/03a01Fa.wav",
        release_files=535,
        download_mb=40,
        checksum_note="the publisher gives no checksum: only the announced length is checked",
        licence=(
            "EMO-DB: Burkhardt, F., Paeschke, A., Rolfes, M., Sendlmeier, W. & Weiss, B. "
            "(2005). A database of German emotional speech. Proc. Interspeech 2005, "
            "Lisbon. TU Berlin; free for research use: cite the paper, do not "
            "redistribute the audio."
        ),
    )
)


def manual_instructions(source: Source, root: str) -> str:
    """How to get ``source`` without this command, and where its files go under ``root``."""
    where = f"{root.rstrip('/')}/{source.example}"
    if source.kind == "dataverse":
        what = f"open {source.page} and download the whole dataset as a zip (Access Dataset)"
    elif source.kind == "zenodo":
        what = f"open {source.page} and download {source.filename}"
    else:
        what = f"download {source.url} (page: {source.page})"
    return (
        f"To get {source.name} by hand: {what}; then run\n"
        f"  ser data download {source.name} --archive <the downloaded zip> --to {root}\n"
        f"or unpack it yourself so that the files sit like {where}"
    )
