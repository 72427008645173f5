"""How accurate a speaker-normalised run is in each way a clip can be served.

Cross-validation normalises each test speaker's pooled vectors by the statistics of
all of that speaker's clips at once. A served clip arrives alone (``ser predict``,
``/predict`` without a session), or one after another in a session (``?session=`` on
the HTTP API, every WebSocket stream, ``ser predict --one-speaker``).
``served_modes(predictor, data)`` replays a run's test clips every such way:

- ``prior``: each clip alone, normalised by the average training speaker;
- ``session``: each speaker's clips in a seeded random order through one
  ``SpeakerSession`` (each clip counted, then normalised by the statistics so far,
  shrunk towards the prior);
- ``session_by_emotion``: the same with the clips sorted by emotion, one emotion's
  clips after another's: the worst case for running statistics;
- ``speaker``: all of the speaker's clips at once, as cross-validation scores them.

A sequence model trained on speaker-normalised frames (``features.normalisation:
speaker``) is replayed the same ways on its test clips' frames: alone, each clip's
frames by the average training speaker (``Predictor.lone_clip_frames``); in a session,
counted into it as a served clip's frames are (``Predictor.session_frames``).

Labels only score (and order the worst-case session); nothing is chosen here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from ser.data.pipeline import to_model_input
from ser.data.prepare import PreparedData
from ser.inference import Predictor, SpeakerSession
from ser.metrics import unweighted_accuracy

# Session hits by the clip's position in its speaker's session (1-based, inclusive).
BUCKETS = [(1, 1), (2, 5), (6, 10), (11, 25), (26, 50), (51, 10**9)]
MODES = ("prior", "session", "session_by_emotion", "speaker")


def _bucket_name(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}" if hi < 10**9 else f"{lo}+"


def served_modes(predictor: Predictor, data: PreparedData, seed: int = 0) -> dict[str, Any]:
    """UA of the run's test clips in each mode (``MODES``), and per session order the
    hits (1/0) by the clip's position in its session. The run must be speaker-normalised:
    its pooled vectors (``predictor.speaker_prior``), or, for a sequence run, its frames
    (``predictor.frame_sessions``; ``data`` then holds the raw frames,
    ``prepare_data(..., keep_features=True)``)."""
    if predictor.speaker_prior is not None:
        clips = _pooled_clips(predictor, data)
    elif predictor.frame_sessions:
        clips = _frame_clips(predictor, data)
    else:
        raise ValueError(
            "served modes differ only for speaker-normalised runs "
            "(features.pooled_normalisation: speaker, or speaker-normalised frames)"
        )
    alone, in_session, predict = clips
    rows, targets = data.rows["test"], data.targets["test"].tolist()
    classes = len(predictor.labels)
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_speaker[r.speaker].append(i)

    def replay(order_of: Callable[[list[int]], list[int]]) -> tuple[list[int], dict]:
        """Each speaker's clips through one session in ``order_of(indices)``."""
        predicted, position = [0] * len(rows), [0] * len(rows)
        for idx in by_speaker.values():
            order = order_of(idx)
            session = predictor.new_session()
            inputs = []
            for n, i in enumerate(order, start=1):
                inputs.append(in_session(i, session))
                position[i] = n
            for i, p in zip(order, predict(inputs), strict=True):
                predicted[i] = p
        hits = {
            _bucket_name(lo, hi): [
                int(predicted[i] == targets[i]) for i in range(len(rows)) if lo <= position[i] <= hi
            ]
            for lo, hi in BUCKETS
        }
        return predicted, hits

    rng = np.random.default_rng(seed)
    session, hits = replay(lambda idx: rng.permutation(idx).tolist())
    by_emotion, hits_by_emotion = replay(lambda idx: sorted(idx, key=lambda i: (targets[i], i)))
    predicted = {
        "prior": predict([alone(i) for i in range(len(rows))]),
        "session": session,
        "session_by_emotion": by_emotion,
        "speaker": np.asarray(predictor.predict_inputs(data.inputs["test"])).argmax(axis=1),
    }
    return {
        "speakers": sorted(by_speaker),
        "n": len(rows),
        "ua": {
            mode: float(unweighted_accuracy(np.asarray(targets), np.asarray(p), classes))
            for mode, p in predicted.items()
        },
        "session_hits_by_position": hits,
        "session_by_emotion_hits_by_position": hits_by_emotion,
    }


# How a run's test clip ``i`` becomes a normalised model input alone and as a session's
# next clip, and how a list of such inputs becomes predicted classes.
_Clips = tuple[
    Callable[[int], np.ndarray],
    Callable[[int, SpeakerSession], np.ndarray],
    Callable[[list[np.ndarray]], list[int]],
]


def _pooled_clips(predictor: Predictor, data: PreparedData) -> _Clips:
    """Test clips of a run on speaker-normalised pooled vectors."""
    f = predictor.cfg.features
    raw = [to_model_input(data.features[r.path], f.mode, f.pooling, 0) for r in data.rows["test"]]

    def in_session(i: int, session: SpeakerSession) -> np.ndarray:
        session.add(raw[i])
        return predictor.normaliser.apply(session.normaliser().apply(raw[i]))

    def predict(inputs: list[np.ndarray]) -> list[int]:
        return predictor.predict_batch(np.stack(inputs)).argmax(axis=1).tolist()

    return (
        lambda i: predictor.normaliser.apply(predictor.speaker_prior.apply(raw[i])),
        in_session,
        predict,
    )


def _frame_clips(predictor: Predictor, data: PreparedData) -> _Clips:
    """Test clips of a sequence run on speaker-normalised frames, from their raw frames,
    each normalised as ``Predictor.frame_features`` normalises a served clip's."""
    raw = [data.raw_features[r.path] for r in data.rows["test"]]

    def in_session(i: int, session: SpeakerSession) -> np.ndarray:
        return predictor.model_input(predictor.session_frames(raw[i], session))

    def predict(inputs: list[np.ndarray]) -> list[int]:
        return predictor.predict_inputs(inputs).argmax(axis=1).tolist()

    return lambda i: predictor.model_input(predictor.lone_clip_frames(raw[i])), in_session, predict
