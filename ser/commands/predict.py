"""``ser predict PATH...``: the emotion of audio files (folders are searched), as a table or JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ser.cli import add_runtime_arg, add_tensorflow_args

AUDIO_SUFFIXES = {
    ".wav",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".aif",
    ".aiff",
    ".aifc",
    ".au",
    ".caf",
    ".w64",
    ".rf64",
    ".webm",
    ".m4a",
}
DEFAULT_RUN = "checkpoints/best"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict the emotion of audio files or folders",
        description="Predict every file given, and every audio file under the folders given "
        f"({', '.join(sorted(AUDIO_SUFFIXES))}). Clips longer than the model's window "
        "are cut into sliding windows; the table then shows how many. Clips without speech "
        "(silence, noise, music-like tones) are shown as no_speech, never with an emotion.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="audio files or folders")
    p.add_argument(
        "--run",
        default=DEFAULT_RUN,
        metavar="RUN_DIR",
        help=f"run directory (default {DEFAULT_RUN})",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    p.add_argument("--timeline", action="store_true", help="also print each window of long clips")
    p.add_argument(
        "--no-speech-check",
        dest="speech_check",
        action="store_false",
        help="predict every file, even silence, noise or music (default: no_speech)",
    )
    p.add_argument(
        "--one-speaker",
        action="store_true",
        help="the files are one speaker's clips: a speaker-normalised model "
        "(features.pooled_normalisation: speaker) normalises each by that speaker's clips so "
        "far, in the order given, as an HTTP session does; otherwise each clip is normalised "
        "by the average training speaker; clips without speech are not counted",
    )
    add_runtime_arg(p, "auto")
    add_tensorflow_args(p, on_demand=True)
    p.set_defaults(func=run)


def collect(paths: list[str]) -> tuple[list[Path], list[dict[str, Any]]]:
    """Files to predict (folders searched recursively, sorted) and errors for bad paths."""
    files: list[Path] = []
    errors: list[dict[str, Any]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
            )
            if not found:
                errors.append({"path": raw, "error": f"{raw}: folder holds no audio files"})
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            errors.append({"path": raw, "error": f"{raw}: no such file or folder"})
    return files, errors


def run_dirs_among(paths: list[str]) -> list[str]:
    """The ``paths`` that are run directories (``ser predict RUN FILE`` written for
    ``ser predict --run RUN FILE``): predicting the files with another run would
    answer with the wrong model."""
    from ser.runs import RunDirError, check_run_dir

    found = []
    for raw in paths:
        try:
            check_run_dir(raw)
        except RunDirError:
            continue
        found.append(raw)
    return found


def predict_path(predictor, path: Path, session=None) -> dict[str, Any]:
    """One file -> the result dict of ``Predictor.predict_file`` (WebM/M4A through ffmpeg);
    ``session``: the speaker's ``SpeakerSession``, which the clip is counted into."""
    import numpy as np

    from ser.audio import AudioError, decode_bytes_with_ffmpeg, ffmpeg_path

    try:
        return predictor.predict_file(path, session)
    except AudioError as first:
        if ffmpeg_path() is None:
            raise
        try:
            wave = decode_bytes_with_ffmpeg(path.read_bytes(), predictor.sample_rate, 24 * 3600)
        except (AudioError, OSError):  # OSError: e.g. no read permission
            raise first from None
        if wave.size == 0:
            raise AudioError(f"{path}: empty audio (0 samples)") from None
        if not np.isfinite(wave).all():  # soundfile's own check, which ffmpeg skips
            raise first from None
        return predictor.describe(predictor.predict_clip(wave, session=session), path)


def short_path(path: str, width: int) -> str:
    """``path`` in at most ``width`` characters with its file name whole: a longer path
    loses the middle of its folder part (``rec…/day2/clip.wav``)."""
    if len(path) <= width:
        return path
    cut = max(path.rfind("/"), path.rfind(os.sep))
    folder, sep, name = (
        path[: max(cut, 0)],
        path[cut : cut + 1] if cut >= 0 else "",
        path[cut + 1 :],
    )
    room = width - len(name) - len(sep) - 1  # characters of the folder left around "…"
    if not sep or room < 2:
        return name if len(name) <= width or not sep else "…/" + name
    head = (room + 1) // 2
    return folder[:head] + "…" + folder[len(folder) - (room - head) :] + sep + name


def format_table(results: list[dict[str, Any]], timeline: bool = False) -> str:
    """The results as a table: file, emotion (``no_speech`` when the clip holds no
    speech), confidence, seconds and the top three labels; errors in the emotion column."""
    width = min(60, max([len("file")] + [len(r["path"]) for r in results]))
    lines = [f"{'file':<{width}}  {'emotion':<9} {'conf':>5} {'seconds':>8}  top 3"]
    for r in results:
        name = short_path(r["path"], width)
        if "error" in r:
            lines.append(f"{name:<{width}}  error: {r['error']}")
            continue
        if r.get("type") == "no_speech":
            lines.append(
                f"{name:<{width}}  {'no_speech':<9} {'':>5} {r['duration']:8.2f}  "
                f"(voiced {r['voiced']:.2f}, {r['rms_db']:.0f} dBFS)"
            )
            continue
        top = sorted(r["probabilities"].items(), key=lambda kv: -kv[1])[:3]
        windows = f"  ({len(r['timeline'])} windows)" if r.get("timeline") else ""
        lines.append(
            f"{name:<{width}}  {r['emotion']:<9} {r['confidence']:5.2f} {r['duration']:8.2f}  "
            + ", ".join(f"{k} {v:.2f}" for k, v in top)
            + windows
        )
        if timeline:
            for w in r.get("timeline") or []:
                lines.append(
                    f"{'':<{width}}    {w['start']:6.2f}-{w['end']:.2f} s  {w['emotion']:<9} "
                    f"{w['confidence']:.2f}"
                )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ser.audio import AudioError
    from ser.inference import Predictor, tune_for_inference

    for raw in run_dirs_among(args.paths):
        print(
            f"error: {raw}: a run directory, not audio; to predict with it, pass it as --run {raw}",
            file=sys.stderr,
        )
        return 2
    files, errors = collect(args.paths)
    if not files:
        for e in errors:
            print(f"error: {e['error']}", file=sys.stderr)
        print("error: no audio files to predict", file=sys.stderr)
        return 2
    tune_for_inference()
    predictor = Predictor.load(args.run, speech_check=args.speech_check, runtime=args.runtime)
    session = predictor.new_session() if args.one_speaker else None
    if args.one_speaker and session is None:
        print(
            f"note: {predictor.run_dir.name} does not normalise by speaker; --one-speaker "
            "changes nothing",
            file=sys.stderr,
        )
    results: list[dict[str, Any]] = list(errors)
    for path in files:
        try:
            results.append(predict_path(predictor, path, session))
        except (AudioError, ValueError) as exc:
            results.append({"path": str(path), "error": str(exc)})
    failed = sum("error" in r for r in results)
    if args.json:
        print(json.dumps({"model_id": predictor.model_id, "results": results}, indent=2))
    else:
        print(f"model {predictor.model_id}")
        print(format_table(results, args.timeline))
    if failed:
        print(f"{failed} of {len(results)} path(s) could not be predicted", file=sys.stderr)
    # Like every command: non-zero only when nothing usable was left.
    return 1 if failed == len(results) else 0
