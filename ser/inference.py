"""Load a run directory once and predict with exactly the training-time features.

``Predictor.load(run_dir)`` is shared by ``evaluate.py``, ``ser predict`` and the
HTTP service: it reads the resolved config, the label list and the normaliser
saved by training and loads ``model.keras`` in Keras safe mode.

A clip longer than the model's window (``data.max_seconds``) is cut into sliding
windows: frame features are computed once on the whole clip (as in training,
where a long clip's features are computed whole and then centre-cropped), each
window of ``max_frames`` frames is predicted, and the clip's overall distribution
is the mean of the windows'. A clip that fits the window is one window, exactly
the input training would have built from it.

Clips are predicted through a ``tf.function`` instead of ``tf.data`` +
``Model.predict`` (tens of milliseconds of overhead per call). By default it is
XLA-compiled, which makes a 3 s clip's LSTM pass about five times faster on CPU;
XLA compiles once per input shape, so batches are padded to a few fixed shapes:
``max_frames`` frames (zero frames are masked, so padding changes nothing) and a
batch size from ``XLA_BATCH_SIZES``. ``warm_up`` compiles them ahead of the first
request. Inputs longer than the window use the uncompiled graph function.

Before a clip is predicted it is checked for speech (``ser.speech``): silence, noise
and music-like tones get a ``no_speech`` result with the detector's evidence and no
emotion, never a label. ``Predictor(speech_check=False)`` turns the check off.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ser import runs
from ser.audio import load_audio, resample
from ser.config import Config, load_config
from ser.data.pipeline import (
    SESSION_PRIOR_WEIGHT,
    Normaliser,
    blended_normaliser,
    make_dataset,
    max_frames_for,
    spread_weighted_normaliser,
    to_model_input,
    zscore,
)
from ser.features.extractors import analysed_span, extract_features
from ser.numpy_runtime import NumpyModel

if TYPE_CHECKING:
    from ser.onnx_export import OnnxModel
from ser.process_tuning import (  # noqa: F401  (re-exported: callers import them from here)
    keep_freed_memory,
    limit_blas_threads,
    tune_for_inference,
)
from ser.runs import RunDirError, check_run_dir, model_id_of
from ser.speech import DEFAULT_THRESHOLDS, SpeechEvidence, SpeechThresholds, detect_speech

# How ``Predictor.load`` runs the model (see there).
RUNTIMES = ("auto", "numpy", "onnx", "keras")
# Batch sizes the XLA function is compiled for; a batch is padded up to the next one.
XLA_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
# Probabilities and confidences in JSON output (API, ``ser predict --json``) are rounded
# to this many decimals: more digits are noise of the float32 model.
PROBABILITY_DECIMALS = 4
# The evidence fields of ``ClipPrediction.summary`` (``SpeechEvidence.as_dict``).
NO_EVIDENCE = ("voiced", "flat", "rms_db")


def limit_tf_threads(threads: int) -> bool:
    """Run TensorFlow's ops on ``threads`` threads (intra- and inter-op; 0 = its default).

    Must come before TensorFlow runs its first op; returns False when it is too late.
    A server gains from one thread: the model's small per-step ops do not split well
    across cores, and one busy core is left for decoding, features and HTTP (measured
    under load: mean batch-of-one latency 2.6 ms on one thread, 11 ms on two).
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        return False
    return True


@dataclass(frozen=True)
class WindowPrediction:
    """One window of a clip: ``start``/``end`` in seconds, ``probabilities`` [num_classes]."""

    start: float
    end: float
    probabilities: np.ndarray


def rounded(probability: float) -> float:
    """A probability as JSON output shows it (``PROBABILITY_DECIMALS`` decimals)."""
    return round(float(probability), PROBABILITY_DECIMALS)


@dataclass(frozen=True)
class ClipPrediction:
    """A whole clip: the overall distribution (mean over windows) and every window.

    A clip the speech check found no speech in has ``probabilities`` None, no windows
    and ``kind`` ``no_speech``; ``speech`` is the check's evidence (None: not checked).
    """

    labels: list[str]
    duration: float  # seconds
    probabilities: np.ndarray | None  # [num_classes]; None when there is no speech
    windows: list[WindowPrediction]
    speech: SpeechEvidence | None = None

    @property
    def kind(self) -> str:
        """``prediction``, or ``no_speech`` when the speech check found none."""
        return "no_speech" if self.probabilities is None else "prediction"

    @property
    def emotion(self) -> str | None:
        if self.probabilities is None:
            return None
        return self.labels[int(np.argmax(self.probabilities))]

    @property
    def confidence(self) -> float | None:
        return None if self.probabilities is None else float(np.max(self.probabilities))

    @property
    def windowed(self) -> bool:
        """True when the clip was longer than the model's window."""
        return len(self.windows) > 1

    def distribution(self, probs: np.ndarray | None = None) -> dict[str, float] | None:
        """``probs`` (default: the clip's) by label, rounded for JSON; None without speech."""
        probs = self.probabilities if probs is None else probs
        if probs is None:
            return None
        return {label: rounded(p) for label, p in zip(self.labels, probs)}

    def summary(self) -> dict[str, Any]:
        """The JSON-ready fields every entry point reports for a clip: ``type``,
        ``emotion``, ``confidence``, ``probabilities`` (null for ``no_speech``) and the
        speech check's ``voiced``, ``flat``, ``rms_db`` (null when not checked)."""
        confidence = self.confidence
        evidence = self.speech.as_dict() if self.speech else dict.fromkeys(NO_EVIDENCE)
        return {
            "type": self.kind,
            "emotion": self.emotion,
            "confidence": None if confidence is None else rounded(confidence),
            "probabilities": self.distribution(),
            **evidence,
        }

    def timeline(self) -> list[dict[str, Any]]:
        """One dict per window: start, end (s), emotion, confidence, probabilities."""
        return [
            {
                "start": round(w.start, 3),
                "end": round(w.end, 3),
                "emotion": self.labels[int(np.argmax(w.probabilities))],
                "confidence": rounded(np.max(w.probabilities)),
                "probabilities": self.distribution(w.probabilities),
            }
            for w in self.windows
        ]


@dataclass(frozen=True)
class PreparedClip:
    """Normalised model inputs of one clip's windows, ready for ``predict_normalised``."""

    duration: float  # seconds
    spans: list[tuple[float, float]]  # (start, end) seconds per window
    inputs: list[np.ndarray]  # normalised; [T, D] (sequence) or [D] (pooled) each
    speech: SpeechEvidence | None = None  # the speech check it passed, if checked


@dataclass(frozen=True)
class SpeakerStatistics:
    """What a ``SpeakerSession`` has counted, as a store keeps it between requests: the
    number of clips and the sums of their raw pooled vectors and of their squares [D]
    (float64)."""

    count: int
    total: np.ndarray
    total_sq: np.ndarray


class SpeakerSession:
    """Label-free statistics of one speaker's clips (a session, a live stream), for
    ``features.pooled_normalisation: speaker`` at inference (``add``), or a sequence run
    on speaker-normalised frames (``add_frames``).

    Training normalises each speaker's pooled vectors by the mean and standard deviation
    of all of that speaker's clips. A session gathers the raw pooled vectors of the clips
    it has seen and normalises the next one by their statistics, shrunk towards the
    average training speaker's (``speaker_prior.json``) with ``prior_weight``
    pseudo-clips: mean = (n * m + k * m_prior) / (n + k), and the same for the variance.
    After many clips this is what cross-validation measured; after none it is the prior.
    ``spread_exponent`` > 0 makes the prior weight grow when the session's clips vary less
    than the prior expects (``spread_weighted_normaliser``: a run of one emotion leans on
    the prior instead of becoming the speaker's centre); 0 is the plain blend above.
    Counting frames, the statistics are those of the speaker's frames and the prior is
    ``frame_prior.json``; the spread then compares whole-frame variances and does little.
    Not thread-safe: the HTTP service holds a lock per session. ``statistics`` and
    ``restore`` move the counts to and from a session store shared by several processes.
    """

    def __init__(
        self,
        prior: Normaliser,
        prior_weight: float = SESSION_PRIOR_WEIGHT,
        spread_exponent: float = 0.0,
    ) -> None:
        if prior_weight <= 0:
            raise ValueError(f"prior_weight must be > 0, got {prior_weight}")
        if spread_exponent < 0:
            raise ValueError(f"spread_exponent must be >= 0, got {spread_exponent}")
        self.prior = prior
        self.prior_weight = float(prior_weight)
        self.spread_exponent = float(spread_exponent)
        dim = prior.mean.shape[0]
        self.count = 0
        self._sum = np.zeros(dim, np.float64)
        self._sum_sq = np.zeros(dim, np.float64)

    def add(self, vector: np.ndarray) -> None:
        """Count one raw pooled vector [D] (before any normalisation)."""
        x = np.asarray(vector, np.float64)
        if x.shape != self._sum.shape:
            raise ValueError(f"expected a pooled vector of {self._sum.shape[0]}, got {x.shape}")
        self.count += 1
        self._sum += x
        self._sum_sq += x * x

    def add_frames(self, frames: np.ndarray) -> None:
        """Count one clip's raw frame features [T, D] (a sequence run on speaker-normalised
        frames, whose prior is ``frame_prior.json``): by its frame mean and mean square, so
        after many clips the statistics are those of all the speaker's frames, which
        training normalised by. Each clip counts once, whatever its length."""
        x = np.asarray(frames, np.float64)
        if x.ndim != 2 or x.shape[1] != self._sum.shape[0] or x.shape[0] == 0:
            raise ValueError(f"expected frame features [T, {self._sum.shape[0]}], got {x.shape}")
        self.count += 1
        self._sum += x.mean(axis=0)
        self._sum_sq += np.square(x).mean(axis=0)

    def normaliser(self) -> Normaliser:
        """The blend of this session's statistics and the prior's."""
        if self.spread_exponent > 0:
            return spread_weighted_normaliser(
                self.count,
                self._sum,
                self._sum_sq,
                self.prior,
                self.prior_weight,
                self.spread_exponent,
            )
        return blended_normaliser(
            self.count, self._sum, self._sum_sq, self.prior, self.prior_weight
        )

    def statistics(self) -> SpeakerStatistics:
        """A copy of what this session has counted so far."""
        return SpeakerStatistics(self.count, self._sum.copy(), self._sum_sq.copy())

    def restore(self, stats: SpeakerStatistics) -> SpeakerSession:
        """Continue from ``stats`` (another session's ``statistics()``, e.g. from a store);
        returns this session."""
        total = np.asarray(stats.total, np.float64)
        total_sq = np.asarray(stats.total_sq, np.float64)
        if total.shape != self._sum.shape or total_sq.shape != self._sum.shape:
            raise ValueError(
                f"expected speaker sums of {self._sum.shape[0]} values, got "
                f"{total.shape} and {total_sq.shape}"
            )
        if stats.count < 0:
            raise ValueError(f"a speaker session's count must be >= 0, got {stats.count}")
        self.count = int(stats.count)
        self._sum = total.copy()
        self._sum_sq = total_sq.copy()
        return self


def _onnx_model(model: NumpyModel, labels: list[str]) -> OnnxModel:
    """``model`` converted to ONNX and run on ONNX Runtime."""
    from ser.onnx_export import OnnxModel

    return OnnxModel(model, labels)


def _light_model(path: Path, runtime: str, labels: list[str]) -> NumpyModel | OnnxModel | None:
    """What runs ``path``'s model without TensorFlow on ``runtime``: None for ``keras``,
    and for ``auto`` when the model holds a layer the light runtimes lack (Keras runs it);
    an explicit ``numpy`` or ``onnx`` on such a model is a ``RunDirError`` naming it."""
    from ser.numpy_runtime import UnsupportedModel, read_numpy_model

    if runtime == "keras":
        return None
    try:
        model = read_numpy_model(path / runs.MODEL)
        return model if runtime == "numpy" else _onnx_model(model, labels)
    except UnsupportedModel as exc:  # UnsupportedForONNX included
        if runtime == "auto":
            return None
        raise RunDirError(
            f"--runtime {runtime}: {path / runs.MODEL} cannot run on "
            f"{'ONNX Runtime' if runtime == 'onnx' else 'NumPy'}: {exc}; use --runtime keras"
        ) from None


def _frame_prior(path: Path, cfg: Config) -> Normaliser | None:
    """The run's frame_prior.json, for a sequence model trained on speaker-normalised
    frames; None for any other run, and for such runs saved before the file existed."""
    if not cfg.features.speaker_normalised_frames:
        return None
    file = path / runs.FRAME_PRIOR
    return Normaliser.load(file) if file.is_file() else None


def _load_keras_model(run_dir: Path, tf_threads: int | None = None) -> Any:
    """``run_dir``'s model.keras in Keras safe mode, or ``RunDirError`` saying why not;
    TensorFlow runs on ``tf_threads`` threads when given (``limit_tf_threads``)."""
    from ser.tensorflow_startup import import_tensorflow

    import_tensorflow()  # first, so that its start-up notices are filtered
    if tf_threads is not None:
        limit_tf_threads(tf_threads)
    import keras

    import ser.models  # noqa: F401  (registers the custom layers before loading)

    try:
        return keras.models.load_model(run_dir / runs.MODEL, compile=False, safe_mode=True)
    except ValueError as exc:  # e.g. a Lambda layer holding Python code; a damaged file
        reason = " ".join(str(exc).split())[:240]
        raise RunDirError(
            f"{run_dir / runs.MODEL}: not loadable in Keras safe mode, which never runs "
            f"code stored in a model file: {reason}"
        ) from None


@dataclass
class Predictor:
    """A loaded run: turns audio into emotion probabilities exactly as training did.

    Built by ``Predictor.load(run_dir)``; every consumer (``ser predict``, the HTTP
    service and its stream, ``evaluate.py``, export, the benchmarks) goes through it.
    Its methods form three layers, each usable on its own:

    - **inputs** (CPU only, no model call): ``frame_features`` (wave -> frames [T, F]),
      ``model_input`` (frames -> the model's input, pooled or cropped, optionally
      normalised by a ``SpeakerSession``), ``prepare_clip`` (wave -> normalised inputs
      of its sliding windows);
    - **model**: ``predict_batch`` (a normalised batch through the XLA-compiled
      function, padded to a fixed shape), ``predict_normalised`` (a list of normalised
      inputs in batches), ``predict_inputs`` (un-normalised inputs through tf.data and
      ``Model.predict``, the evaluation path), ``warm_up`` (compile ahead of requests);
    - **clips**: ``predict_clip`` (wave -> windows and overall distribution),
      ``finish_clip`` (the same from a ``prepare_clip`` and its probabilities, for a
      server that batches windows of several requests), ``predict_wave`` (the training
      view: one centre-cropped window), ``predict_file`` and ``describe`` (a file -> the
      JSON-ready result).

    Example::

        predictor = Predictor.load("checkpoints/best")
        result = predictor.predict_file("clip.wav")  # {"emotion": "sad", ...}
    """

    run_dir: Path
    cfg: Config
    labels: list[str]
    normaliser: Normaliser
    _keras: Any  # the Keras model, or None until ``model`` loads it
    model_id: str = ""
    xla: bool = True
    # features.pooled_normalisation speaker: a lone clip has no speaker statistics, so
    # its pooled vector is normalised by the average training speaker's (mean of the
    # speakers' means and stds, speaker_prior.json). Less accurate than a speaker's own.
    speaker_prior: Normaliser | None = None
    # Sequence models with features.normalisation speaker: the average training speaker's
    # frame statistics (frame_prior.json), which a clip's frames are normalised by, since
    # its speaker is unknown. Runs saved without it z-score each clip by itself.
    frame_prior: Normaliser | None = None
    # Check every clip for speech first (``ser.speech``); clips without get ``no_speech``.
    speech_check: bool = True
    speech_thresholds: SpeechThresholds = DEFAULT_THRESHOLDS
    _functions: dict[bool, Any] = field(default_factory=dict, repr=False)
    # The model run without TensorFlow (``ser.numpy_runtime``, or ONNX Runtime), if it is.
    light_model: NumpyModel | OnnxModel | None = field(default=None, repr=False)

    @classmethod
    def load(
        cls,
        run_dir: str | os.PathLike[str],
        *,
        warm_up: bool = False,
        xla: bool = True,
        speech_check: bool = True,
        runtime: str = "auto",
        tf_threads: int | None = None,
    ) -> Predictor:
        """Read a run directory. ``warm_up`` compiles the model function for every batch
        size in ``XLA_BATCH_SIZES`` now (a server); otherwise each compiles on first use.
        ``xla=False`` keeps the plain graph function (no compilation, slower calls).
        ``speech_check=False`` predicts every clip, speech or not. ``runtime`` says what
        runs the model: ``auto`` ONNX Runtime for the models ``ser.onnx_export`` converts
        (every model type this project builds, ensembles included: no TensorFlow import,
        which costs about 6 s, and faster calls than Keras, see BENCHMARKS.md "Keras and
        ONNX Runtime paths per model type") and Keras for any other; ``onnx`` ONNX Runtime
        or a ``RunDirError`` naming the layer it lacks; ``numpy`` the same on
        ``ser.numpy_runtime`` (NumPy alone; a recurrent layer's frame loop is slow);
        ``keras`` always Keras. ``tf_threads``: when Keras runs the model, TensorFlow's thread count
        (``limit_tf_threads``), set before it runs an op."""
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        path = check_run_dir(run_dir)
        cfg = load_config(path / runs.CONFIG, env={})
        labels = json.loads((path / runs.LABELS).read_text(encoding="utf-8"))
        normaliser = Normaliser.load(path / runs.NORMALISER)
        fast = _light_model(path, runtime, labels)
        prior = None
        if cfg.features.pooled_normalisation == "speaker":
            if not (path / runs.SPEAKER_PRIOR).is_file():
                raise RunDirError(
                    f"{path}: missing {runs.SPEAKER_PRIOR} (features.pooled_normalisation)"
                )
            prior = Normaliser.load(path / runs.SPEAKER_PRIOR)
        predictor = cls(
            path,
            cfg,
            labels,
            normaliser,
            None,
            model_id_of(path),
            xla,
            prior,
            frame_prior=_frame_prior(path, cfg),
            speech_check=speech_check,
        )
        predictor.light_model = fast
        if fast is None:  # Keras now, so that a bad file fails here
            predictor._keras = _load_keras_model(path, tf_threads)
        if warm_up:
            predictor.warm_up()
        return predictor

    @property
    def model(self) -> Any:
        """The Keras model, loaded on first use (a NumPy-run predictor may never need it)."""
        if self._keras is None:
            self._keras = _load_keras_model(self.run_dir)
        return self._keras

    @property
    def runtime(self) -> str:
        """``numpy`` (``ser.numpy_runtime``), ``onnx`` (ONNX Runtime) or ``keras``."""
        if self.light_model is None:
            return "keras"
        return "numpy" if isinstance(self.light_model, NumpyModel) else "onnx"

    @property
    def parameters(self) -> int:
        """The model's parameter count (without loading Keras when NumPy runs it)."""
        if self.light_model is not None:
            return self.light_model.count_params()
        return int(self.model.count_params())

    # ------------------------------------------------------------------ shapes
    @property
    def max_frames(self) -> int:
        c = self.cfg
        return max_frames_for(c.data.max_seconds, c.data.sample_rate, c.features.frame.hop_length)

    @property
    def sample_rate(self) -> int:
        return self.cfg.data.sample_rate

    @property
    def sequence(self) -> bool:
        """True for frame-sequence models (lstm, cnn, crnn, tcn), False for pooled statistics (dense)."""
        return self.cfg.features.mode == "sequence"

    @property
    def input_dim(self) -> int:
        """Width D of one model input frame (sequence) or vector (pooled)."""
        return int(self.normaliser.mean.shape[0])

    @property
    def window_seconds(self) -> float:
        return self.cfg.data.max_seconds

    # ------------------------------------------------------------------ inputs
    def new_session(
        self, prior_weight: float = SESSION_PRIOR_WEIGHT, spread_exponent: float = 0.0
    ) -> SpeakerSession | None:
        """Statistics for one speaker's clips, or None when the model does not use them;
        options as ``SpeakerSession``'s. A run with ``features.pooled_normalisation:
        speaker`` counts pooled vectors; a sequence run on speaker-normalised frames
        (``frame_sessions``) counts each clip's frames."""
        if self.speaker_prior is not None:
            return SpeakerSession(self.speaker_prior, prior_weight, spread_exponent)
        if self.frame_sessions:
            return SpeakerSession(self.frame_prior, prior_weight, spread_exponent)
        return None

    @property
    def frame_sessions(self) -> bool:
        """Whether a session normalises a clip's frames (a sequence run on speaker-
        normalised frames with its ``frame_prior``) rather than its pooled vector."""
        return (
            self.speaker_prior is None
            and self.frame_prior is not None
            and self.cfg.features.normalisation == "speaker"
        )

    def model_input(
        self, features: np.ndarray, session: SpeakerSession | None = None
    ) -> np.ndarray:
        """Frame-level features [T, D] -> the model's input, as in training.

        With speaker normalisation of pooled vectors, the vector is normalised by the
        average training speaker, or, given a ``session``, counted into it first and then
        normalised by that speaker's statistics so far (``SpeakerSession``).
        """
        f = self.cfg.features
        x = to_model_input(features, f.mode, f.pooling, self.max_frames)
        if self.speaker_prior is None:
            return x
        if session is None:
            # Per-dimension affine: a later per-speaker z-norm (evaluation) is unaffected.
            return self.speaker_prior.apply(x)
        session.add(x)
        return session.normaliser().apply(x)

    def frame_features(self, wave: np.ndarray, session: SpeakerSession | None = None) -> np.ndarray:
        """float32 mono wave at the run's rate -> frame features [T, D] as training saw them.

        With ``features.trim_db`` (``speech_span``) the clip's leading and trailing
        silence (everything around its speech) is cut first, inside ``extract_features``
        as in training; then ``lone_clip_frames``, or, given
        a ``session`` of a run with ``frame_sessions``, the clip is counted into it and
        normalised by that speaker's statistics so far.
        """
        c = self.cfg
        raw = extract_features(wave, c.data.sample_rate, c.features)
        if session is not None and self.frame_sessions:
            return self.session_frames(raw, session)
        return self.lone_clip_frames(raw)

    @staticmethod
    def session_frames(frames: np.ndarray, session: SpeakerSession) -> np.ndarray:
        """Raw frame features [T, D] of a session's next clip -> counted into the
        session, then normalised by its statistics so far (shrunk towards the prior)."""
        session.add_frames(frames)
        return session.normaliser().apply(frames)

    def lone_clip_frames(self, frames: np.ndarray) -> np.ndarray:
        """Raw frame features [T, D] of one clip, its speaker unknown -> normalised as
        ``features.normalisation`` asks: ``utterance``, z-scored by its own statistics;
        ``speaker``, by the average training speaker (``frame_prior``), or, for a run
        saved without it, by its own statistics (as training treats speakers it cannot
        name)."""
        scope = self.cfg.features.normalisation
        if scope == "none":
            return frames
        if scope == "speaker" and self.frame_prior is not None:
            return self.frame_prior.apply(frames)
        return zscore(frames)

    def input_from_wave(self, wave: np.ndarray) -> np.ndarray:
        """float32 mono wave at the run's sample rate -> model input."""
        return self.model_input(self.frame_features(wave))

    def prepare_clip(
        self,
        wave: np.ndarray,
        hop_seconds: float | None = None,
        session: SpeakerSession | None = None,
    ) -> PreparedClip:
        """float32 mono wave at the run's rate -> normalised inputs of its sliding windows.

        Windows are ``max_frames`` frames long and start every ``hop_seconds`` (default:
        half the window); the last window ends at the clip's last frame, so every
        frame is covered. Pure CPU work with no model call: safe to run in any thread.
        A ``session`` (see ``model_input``) counts each window as one of its clips; a
        session of speaker-normalised frames (``frame_features``) counts the whole clip.
        """
        c = self.cfg
        duration = wave.shape[0] / c.data.sample_rate
        frames = self.frame_features(wave, session)
        total, width = frames.shape[0], self.max_frames
        seconds_per_frame = c.features.frame.hop_length / c.data.sample_rate
        if total <= width:
            return PreparedClip(
                duration,
                [(0.0, duration)],
                [self.normaliser.apply(self.model_input(frames, session))],
            )
        hop = width // 2 if hop_seconds is None else max(1, round(hop_seconds / seconds_per_frame))
        starts = list(range(0, total - width + 1, hop))
        if starts[-1] != total - width:
            starts.append(total - width)
        # Frame 0 is at the clip's start, or where the cut before the speech ended.
        cut = analysed_span(np.asarray(wave, np.float32), c.data.sample_rate, c.features)[0]
        offset = cut / c.data.sample_rate
        spans = [
            (
                offset + s * seconds_per_frame,
                min(offset + (s + width) * seconds_per_frame, duration),
            )
            for s in starts
        ]
        inputs = [
            self.normaliser.apply(self.model_input(frames[s : s + width], session)) for s in starts
        ]
        return PreparedClip(duration, spans, inputs)

    # ------------------------------------------------------------------ model
    def warm_up(self, batch_sizes: Sequence[int] = XLA_BATCH_SIZES) -> None:
        """Compile and run the model function once per batch size, so requests never wait
        for a compilation. Falls back to the uncompiled function if XLA fails here. First,
        one generated clip goes through the speech check and the features, so that the
        first request does not pay their one-off costs (imports, filterbanks: ~2 s)."""
        rng = np.random.default_rng(0)
        self._warm_up_audio_path(rng)
        frames = (self.max_frames,) if self.sequence else ()
        if self.light_model is not None:  # nothing to compile: one call checks it runs
            self.predict_batch(rng.standard_normal((1, *frames, self.input_dim)).astype(np.float32))
            return
        self._compile_keras(batch_sizes)

    def _compile_keras(self, batch_sizes: Sequence[int]) -> None:
        rng = np.random.default_rng(0)
        frames = (self.max_frames,) if self.sequence else ()
        for size in sorted(set(batch_sizes)) if self.xla else [1]:
            x = rng.standard_normal((size, *frames, self.input_dim)).astype(np.float32)
            try:
                self._keras_batch(x)
            except Exception as exc:  # any XLA failure: use the graph function
                if not self.xla:
                    raise
                import warnings

                warnings.warn(f"XLA compilation failed ({exc}); using the uncompiled model")
                self.xla = False
                self._keras_batch(x)
                return

    def _warm_up_audio_path(self, rng: np.random.Generator) -> None:
        seconds = np.arange(self.sample_rate) / self.sample_rate  # 1 s of a gliding voice
        wave = np.sin(2 * np.pi * np.cumsum(150 + 50 * seconds) / self.sample_rate)
        wave = (0.3 * wave + 0.01 * rng.standard_normal(wave.shape)).astype(np.float32)
        self.check_speech(wave)
        self.frame_features(wave)

    def _function(self, xla: bool):
        if xla not in self._functions:
            import tensorflow as tf

            shape = [None, None, self.input_dim] if self.sequence else [None, self.input_dim]
            model = self.model

            @tf.function(
                input_signature=[tf.TensorSpec(shape, tf.float32, name="features")],
                jit_compile=xla,
            )
            def serve(x):
                return model(x, training=False)

            self._functions[xla] = serve
        return self._functions[xla]

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Normalised, padded batch [B, T, D] (sequence) or [B, D] -> probabilities [B, C]."""
        x = np.asarray(batch, np.float32)
        if self.light_model is not None:
            return self.light_model(x)
        return self._keras_batch(x)

    def _keras_batch(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        fits = n <= XLA_BATCH_SIZES[-1] and (not self.sequence or x.shape[1] <= self.max_frames)
        if not self.xla or not fits:
            return np.asarray(self._function(False)(x))
        size = next(b for b in XLA_BATCH_SIZES if b >= n)
        if self.sequence:
            padded = np.zeros((size, self.max_frames, self.input_dim), np.float32)
            padded[:n, : x.shape[1]] = x
        else:
            padded = np.zeros((size, self.input_dim), np.float32)
            padded[:n] = x
        return np.asarray(self._function(True)(padded))[:n]

    def pad_batch(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """Normalised inputs -> one batch; sequences are zero-padded at the end (masked)."""
        if not self.sequence:
            return np.stack(inputs).astype(np.float32, copy=False)
        longest = max(x.shape[0] for x in inputs)
        batch = np.zeros((len(inputs), longest, self.input_dim), np.float32)
        for i, x in enumerate(inputs):
            batch[i, : x.shape[0]] = x
        return batch

    def predict_normalised(self, inputs: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Normalised model inputs -> probabilities [N, num_classes] (compiled path)."""
        if not inputs:
            return np.zeros((0, len(self.labels)), np.float32)
        parts = [
            self.predict_batch(self.pad_batch(inputs[i : i + batch_size]))
            for i in range(0, len(inputs), batch_size)
        ]
        return np.concatenate(parts, axis=0)

    def predict_inputs(self, inputs: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Model inputs -> class probabilities [N, num_classes]."""
        if self.light_model is not None:
            return self.predict_normalised([self.normaliser.apply(x) for x in inputs], batch_size)
        ds = make_dataset(
            list(inputs),
            None,
            normaliser=self.normaliser,
            batch_size=batch_size,
            training=False,
            seed=0,
        )
        return np.asarray(self.model.predict(ds, verbose=0))

    # ------------------------------------------------------------------ clips
    def check_speech(
        self, wave: np.ndarray, sample_rate: int | None = None
    ) -> SpeechEvidence | None:
        """The speech check's evidence for ``wave`` (at ``sample_rate``, default the
        run's), or None when ``speech_check`` is off."""
        if not self.speech_check:
            return None
        return detect_speech(wave, sample_rate or self.sample_rate, self.speech_thresholds)

    def prepare_speech(
        self,
        wave: np.ndarray,
        sample_rate: int | None = None,
        session: SpeakerSession | None = None,
        hop_seconds: float | None = None,
    ) -> PreparedClip | ClipPrediction:
        """A clip (or a live window) at ``sample_rate`` (default the run's) -> the model
        inputs of its windows (``prepare_clip``, counted into ``session``), or, when the
        speech check finds no speech, its ``no_speech`` result (nothing counted). CPU only."""
        rate = sample_rate or self.sample_rate
        evidence = self.check_speech(wave, rate)
        if evidence is not None and not evidence.speech:
            return self.no_speech_clip(wave.shape[0] / rate, evidence)
        wave = resample(wave, rate, self.sample_rate)
        return replace(self.prepare_clip(wave, hop_seconds, session), speech=evidence)

    def no_speech_clip(self, duration: float, evidence: SpeechEvidence) -> ClipPrediction:
        """The result for a clip of ``duration`` seconds the speech check rejected."""
        return ClipPrediction(list(self.labels), duration, None, [], evidence)

    def finish_clip(self, prepared: PreparedClip, probs: np.ndarray) -> ClipPrediction:
        """Window probabilities [W, C] of ``prepared`` -> the clip's prediction."""
        windows = [
            WindowPrediction(start, end, np.asarray(p, np.float32))
            for (start, end), p in zip(prepared.spans, probs)
        ]
        overall = np.asarray(probs, np.float32).mean(axis=0)
        return ClipPrediction(
            list(self.labels), prepared.duration, overall, windows, prepared.speech
        )

    def predict_clip(
        self,
        wave: np.ndarray,
        hop_seconds: float | None = None,
        session: SpeakerSession | None = None,
    ) -> ClipPrediction:
        """One clip (float32 mono at the run's rate), any length -> windows and overall.

        A clip without speech (``check_speech``) is not predicted and not counted into
        ``session``: its result is ``no_speech``."""
        work = self.prepare_speech(wave, session=session, hop_seconds=hop_seconds)
        if isinstance(work, ClipPrediction):
            return work
        return self.finish_clip(work, self.predict_normalised(work.inputs))

    def predict_wave(self, wave: np.ndarray) -> np.ndarray:
        """One clip (float32 mono at the run's rate) -> probabilities [num_classes].

        The training view of the clip: a long clip is centre-cropped to the window.
        """
        x = self.normaliser.apply(self.input_from_wave(wave))
        return self.predict_batch(x[None])[0]

    def predict_file(
        self, path: str | os.PathLike[str], session: SpeakerSession | None = None
    ) -> dict[str, Any]:
        """One audio file -> type, emotion, confidence, probabilities, the speech check's
        evidence, duration (s), model id (see ``describe``); a clip longer than the window
        also gets a ``timeline`` of its windows."""
        wave = load_audio(path, self.sample_rate)
        return self.describe(self.predict_clip(wave, session=session), path)

    def describe(self, clip: ClipPrediction, path: str | os.PathLike[str]) -> dict[str, Any]:
        """``clip`` as the JSON-ready dict ``predict_file`` returns: ``path``, then
        ``ClipPrediction.summary`` (``type`` ``no_speech`` with null emotion, confidence
        and probabilities when the clip holds no speech), ``duration``, ``model_id``."""
        result = {
            "path": str(path),
            **clip.summary(),
            "duration": clip.duration,
            "model_id": self.model_id,
        }
        if clip.windowed:
            result["timeline"] = clip.timeline()
        return result
