"""``ser data summary``: what the configured corpora hold, as tables, JSON and plots.

Reads every corpus in ``data.corpora`` with the same readers and emotion filter as
training (``build_manifest``), so the counts are the ones a run will see. A
missing corpus folder is reported and the others are still summarised. Sample
rates, channels and encodings come from file headers (no decoding).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ser.audio import AudioError, audio_info
from ser.config import EMOTIONS, DataConfig
from ser.data.corpora import CorpusNotFoundError, Skipped, Utterance, build_manifest
from ser.progress import Log


@dataclass
class DataSummary:
    """Counts and durations (seconds) of the usable rows, plus what could not be used.

    ``census`` maps (corpus, sample rate, channels, "FORMAT/SUBTYPE") to a file count.
    """

    rows: list[Utterance]
    skipped: list[Skipped] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # corpus -> why
    census: Counter[tuple[str, int, int, str]] = field(default_factory=Counter)
    order: list[str] = field(default_factory=list)  # corpora as configured

    @property
    def corpora(self) -> list[str]:
        """Corpora with rows, in configured order."""
        present = {r.corpus for r in self.rows}
        return [c for c in self.order if c in present] + sorted(present - set(self.order))

    @property
    def emotions(self) -> list[str]:
        present = {r.emotion for r in self.rows}
        return [e for e in EMOTIONS if e in present]

    def counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """corpus -> emotion -> speaker -> files."""
        out: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
        keyed = Counter((r.corpus, r.emotion, r.speaker) for r in self.rows)
        for (corpus, emotion, speaker), n in sorted(keyed.items()):
            out[corpus][emotion][speaker] = n
        return {c: dict(e) for c, e in out.items()}

    def seconds(self, by: str) -> dict[str, float]:
        """Total duration in seconds grouped by a row field (``corpus``, ``emotion``, ...)."""
        totals: dict[str, float] = defaultdict(float)
        for r in self.rows:
            totals[getattr(r, by)] += r.duration
        return dict(sorted(totals.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": len(self.rows),
            "hours": round(sum(r.duration for r in self.rows) / 3600, 4),
            "counts": self.counts(),
            "seconds_by_corpus": {k: round(v, 3) for k, v in self.seconds("corpus").items()},
            "seconds_by_emotion": {k: round(v, 3) for k, v in self.seconds("emotion").items()},
            "speakers": {
                c: len({r.speaker for r in self.rows if r.corpus == c}) for c in self.corpora
            },
            "census": [
                {"corpus": c, "sample_rate": sr, "channels": ch, "encoding": enc, "files": n}
                for (c, sr, ch, enc), n in sorted(self.census.items())
            ],
            "unreadable": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "dropped": self.dropped,
            "missing": self.missing,
        }


def summarise(data: DataConfig, log: Log = print) -> DataSummary:
    """Read every corpus of ``data`` (a missing one is noted, not fatal) and take a census."""
    summary = DataSummary(rows=[], order=list(data.corpora))
    dropped: Counter[str] = Counter()
    for corpus in data.corpora:
        try:
            manifest = build_manifest(
                data.model_copy(update={"corpora": [corpus]}), log=lambda _: None
            )
        except CorpusNotFoundError as exc:
            summary.missing[corpus] = str(exc)
            log(f"warning: {exc}")
            continue
        summary.rows.extend(manifest.rows)
        summary.skipped.extend(manifest.skipped)
        dropped.update(manifest.dropped)
    summary.dropped = dict(sorted(dropped.items()))
    for row in summary.rows:
        try:
            info = audio_info(row.path)
        except AudioError as exc:  # changed since the manifest read it
            summary.skipped.append(Skipped(row.path, str(exc).removeprefix(f"{row.path}: ")))
            continue
        summary.census[
            (row.corpus, info.sample_rate, info.channels, f"{info.format}/{info.subtype}")
        ] += 1
    return summary


# ------------------------------------------------------------------------ tables
def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]).rstrip()

    return [line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]]


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def _corpora_table(summary: DataSummary) -> list[str]:
    by_corpus = summary.seconds("corpus")
    counts = summary.counts()
    rows = []
    for c in summary.corpora:
        files = sum(n for e in counts[c].values() for n in e.values())
        speakers = len({s for e in counts[c].values() for s in e})
        seconds = by_corpus[c]
        rows.append(
            [
                c,
                files,
                speakers,
                f"{seconds / 3600:.2f}",
                _minutes(seconds),
                f"{seconds / files:.2f}",
            ]
        )
    total = sum(by_corpus.values())
    rows.append(
        [
            "total",
            len(summary.rows),
            len({r.speaker for r in summary.rows}),
            f"{total / 3600:.2f}",
            _minutes(total),
            f"{total / max(1, len(summary.rows)):.2f}",
        ]
    )
    header = ["corpus", "files", "speakers", "hours", "minutes", "mean s"]
    return ["Corpora", *_table(header, rows), ""]


def _emotions_table(summary: DataSummary) -> list[str]:
    corpora = summary.corpora
    by_emotion = summary.seconds("emotion")
    per = Counter((r.corpus, r.emotion) for r in summary.rows)
    rows = []
    for e in summary.emotions:
        n = sum(per[(c, e)] for c in corpora)
        rows.append(
            [
                e,
                *(per[(c, e)] for c in corpora),
                n,
                _minutes(by_emotion[e]),
                f"{by_emotion[e] / n:.2f}",
            ]
        )
    return [
        "Files per emotion (duration per class)",
        *_table(["emotion", *corpora, "total", "minutes", "mean s"], rows),
        "",
    ]


def _speaker_tables(summary: DataSummary) -> list[str]:
    counts = summary.counts()
    out: list[str] = []
    for c in summary.corpora:
        speakers = sorted({s for e in counts[c].values() for s in e})
        here = [e for e in summary.emotions if e in counts[c]]
        rows = [
            [
                s.split(":", 1)[1],
                *(counts[c].get(e, {}).get(s, 0) for e in here),
                sum(counts[c].get(e, {}).get(s, 0) for e in here),
            ]
            for s in speakers
        ]
        out += [
            f"{c}: files per speaker and emotion",
            *_table(["speaker", *here, "total"], rows),
            "",
        ]
    return out


def _census_table(summary: DataSummary) -> list[str]:
    rank = {c: i for i, c in enumerate(summary.corpora)}
    census = sorted(summary.census.items(), key=lambda kv: (rank.get(kv[0][0], 99), kv[0]))
    rows = [[c, sr, ch, enc, n] for (c, sr, ch, enc), n in census]
    return [
        "Sample rates and channels (file headers)",
        *_table(["corpus", "Hz", "channels", "encoding", "files"], rows),
        "",
    ]


def _problems(summary: DataSummary) -> list[str]:
    out: list[str] = []
    if summary.dropped:
        out.append(
            "Left out by data.emotions or corpus options: "
            + ", ".join(f"{k} {n}" for k, n in summary.dropped.items())
        )
    out.append(f"Unreadable or unparseable files: {len(summary.skipped)}")
    out += [f"  {s.path}: {s.reason}" for s in summary.skipped]
    for corpus, why in summary.missing.items():
        out.append(f"Missing corpus {corpus}: {why}")
    return out


def format_summary(summary: DataSummary) -> str:
    """Plain-text tables: corpora, emotion x corpus with durations, speakers, census, problems."""
    out = [
        *_corpora_table(summary),
        *_emotions_table(summary),
        *_speaker_tables(summary),
        *_census_table(summary),
        *_problems(summary),
    ]
    return "\n".join(out).rstrip() + "\n"


# ------------------------------------------------------------------------- plots
def write_plots(summary: DataSummary, folder: str | os.PathLike[str]) -> list[Path]:
    """``class_balance.png`` (files per emotion, stacked by corpus) and ``durations.png``."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    corpora, emotions = summary.corpora, summary.emotions
    per = Counter((r.corpus, r.emotion) for r in summary.rows)
    written = []

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    bottom = [0] * len(emotions)
    for c in corpora:
        heights = [per[(c, e)] for e in emotions]
        ax.bar(emotions, heights, bottom=bottom, label=c)
        bottom = [b + h for b, h in zip(bottom, heights)]
    for x, total in enumerate(bottom):
        ax.annotate(str(total), (x, total), ha="center", va="bottom", fontsize=8)
    ax.set(title="Files per emotion", xlabel="emotion", ylabel="files")
    ax.legend(title="corpus")
    fig.tight_layout()
    written.append(folder / "class_balance.png")
    fig.savefig(written[-1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    durations = [[r.duration for r in summary.rows if r.corpus == c] for c in corpora]
    longest = max((max(d) for d in durations if d), default=1.0)
    bins = [i * longest / 40 for i in range(41)]
    for c, values in zip(corpora, durations):
        ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=f"{c} ({len(values)})")
    ax.set(title="Clip durations", xlabel="seconds", ylabel="files")
    ax.legend(title="corpus")
    fig.tight_layout()
    written.append(folder / "durations.png")
    fig.savefig(written[-1])
    plt.close(fig)
    return written


def write_summary(
    summary: DataSummary, folder: str | os.PathLike[str], plots: bool = True
) -> list[Path]:
    """``summary.txt``, ``summary.json`` and (unless ``plots`` is False) the PNGs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.txt").write_text(format_summary(summary), encoding="utf-8")
    (folder / "summary.json").write_text(
        json.dumps(summary.to_dict(), indent=1) + "\n", encoding="utf-8"
    )
    written = [folder / "summary.txt", folder / "summary.json"]
    if plots and summary.rows:
        written += write_plots(summary, folder)
    return written
