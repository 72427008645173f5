"""YAML -> frozen, typed, validated configuration.

A config file may start with ``extends: other.yaml`` or ``extends: [a.yaml, b.yaml]``
(resolved relative to the file): the listed files are deep-merged left to right (a
later one wins), then the file's own keys over them. Shipped configs compose this way
from named parts (``configs/features/``, ``configs/model/``). Then ``SER_DATA_ROOT``
overrides ``data.root`` and command-line ``--set a.b.c=value`` overrides apply (values
parsed as YAML). An unset (or null) ``data.root`` is the project's own ``data/`` folder
(``default_data_root``), wherever the command runs; a root given in a config or with
``--set`` is used as written, a relative one from the current folder. Every key is checked: an unknown key, a wrong type or an unknown choice raises
``ConfigError`` naming the file, the key path and the valid choices, before any
work is done. Choices are one-ofs: ``model: {type: lstm, lstm: {...}}``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

EMOTIONS: tuple[str, ...] = (
    "neutral",
    "calm",
    "happy",
    "sad",
    "angry",
    "fear",
    "disgust",
    "ps",
    "boredom",
)
Emotion = Literal["neutral", "calm", "happy", "sad", "angry", "fear", "disgust", "ps", "boredom"]
CorpusName = Literal["ravdess", "tess", "emodb", "custom"]
ExtractorName = Literal[
    "mfcc", "chroma", "mel", "contrast", "tonnetz", "prosody", "egemaps", "compare"
]
# Utterance-level functionals from the optional `opensmile` package: one [1, D] row per clip.
UTTERANCE_EXTRACTORS = ("egemaps", "compare")
# Front-end fields that enter a features key (the cache's, the baselines') only when
# set, so entries made before each field existed keep their keys.
OPTIONAL_FEATURE_FIELDS = ("trim_db", "speech_span", "speech_span_foreground_db", "loudness_db")
PoolingName = Literal[
    "mean",
    "std",
    "min",
    "max",
    "median",
    "p1",
    "p25",
    "p75",
    "p99",
    "range",
    "iqr",
    "skew",
    "kurtosis",
    "slope",
    "delta",
]
DATA_ROOT_ENV = "SER_DATA_ROOT"


class ConfigError(ValueError):
    """A configuration problem, with the file and key path in the message."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _folder_name(value: str) -> str:
    # Run names become folders under train.checkpoints_dir and train.experiments_dir:
    # a path in one (../../x, /etc/x) would write outside them.
    if value in ("", ".", "..") or any(c in value for c in "/\\\0") or len(value) > 200:
        raise ValueError(
            "must be a plain folder name (1-200 characters, no '/', '\\' or NUL, not '.' or '..')"
        )
    return value


FolderName = Annotated[str, AfterValidator(_folder_name)]


# --------------------------------------------------------------------------- data
class RavdessOptions(Strict):
    folder: str = "ravdess"
    vocal_channels: list[Literal["speech", "song"]] = ["speech"]
    intensities: list[Literal["normal", "strong"]] = ["normal", "strong"]


class TessOptions(Strict):
    folder: str = "tess"


class EmodbOptions(Strict):
    folder: str = "emodb"


class CustomOptions(Strict):
    folder: str = "custom"
    # Regular expression searched in the file stem; its group "speaker" names the
    # speaker (e.g. "^[0-9]+_[0-9]+_(?P<speaker>[^_]+)_"). Without it: "unknown".
    speaker_pattern: str | None = None
    # The seed project's layout, a fixed test set given by folder (e.g. train-custom and
    # test-custom, relative to data.root). With both set the corpus is read from these
    # two folders instead of `folder`, each row remembers which one it came from, and
    # split.method: folders follows them.
    train_folder: str | None = None
    test_folder: str | None = None

    @model_validator(mode="after")
    def _both_folders(self) -> CustomOptions:
        if (self.train_folder is None) != (self.test_folder is None):
            raise ValueError("train_folder and test_folder go together: set both or neither")
        if self.train_folder is not None and self.train_folder == self.test_folder:
            raise ValueError(f"train_folder and test_folder are both {self.train_folder!r}")
        return self

    @property
    def split_folders(self) -> dict[str, str]:
        """``{"train": train_folder, "test": test_folder}`` when set, else ``{}``."""
        if self.train_folder is None or self.test_folder is None:
            return {}
        return {"train": self.train_folder, "test": self.test_folder}


class DataConfig(Strict):
    # The folder holding the corpus folders. None (unset) means default_data_root():
    # the validated config always holds a path.
    root: str = Field(default_factory=lambda: str(default_data_root()))
    corpora: list[CorpusName] = Field(default=["ravdess", "tess", "emodb"], min_length=1)
    emotions: list[Emotion] = Field(default=list(EMOTIONS), min_length=2)
    sample_rate: int = Field(default=16000, ge=4000, le=96000)
    # Sequence models see at most this many seconds of each clip (longer clips are
    # centre-cropped); pooled features use the whole clip.
    max_seconds: float = Field(default=4.0, gt=0)
    ravdess: RavdessOptions = RavdessOptions()
    tess: TessOptions = TessOptions()
    emodb: EmodbOptions = EmodbOptions()
    custom: CustomOptions = CustomOptions()

    @field_validator("root", mode="before")
    @classmethod
    def _default_root(cls, value: Any) -> Any:
        return str(default_data_root()) if value is None else value


def project_root() -> Path | None:
    """The checkout the package runs from (the folder holding ``pyproject.toml``,
    ``configs/`` and this ``ser/`` package, as after a clone or an editable install),
    or None for a package installed from a wheel."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "configs").is_dir():
        return root
    return None


def default_data_root() -> Path:
    """Where the corpora are unless ``data.root`` or ``SER_DATA_ROOT`` say otherwise: the
    project's own ``data/`` folder in a checkout (whatever the current folder), else,
    for an installed package, ``$XDG_DATA_HOME/ser/data`` (``~/.local/share/ser/data``)."""
    root = project_root()
    if root is not None:
        return root / "data"
    user_data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(user_data) / "ser" / "data"


# -------------------------------------------------------------------------- split
class SplitConfig(Strict):
    # speaker: test speakers drawn per corpus; explicit: the lists below;
    # kfold / loso: speaker-grouped folds, ``fold`` picks the test fold;
    # random: stratified by emotion, speaker-DEPENDENT (labelled so everywhere);
    # folders: the custom corpus's data.custom.train_folder / test_folder (validation
    # from the training folder), speaker-dependent unless its speakers are known.
    method: Literal["speaker", "explicit", "kfold", "loso", "random", "folders"] = "speaker"
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    val_fraction: float = Field(default=0.15, gt=0, lt=1)
    test_speakers: list[str] = []
    val_speakers: list[str] = []
    folds: int = Field(default=5, ge=2)
    fold: int = Field(default=0, ge=0)


# ----------------------------------------------------------------------- features
class FrameParams(Strict):
    n_fft: int = Field(default=512, ge=64)
    win_length: int = Field(default=400, ge=16)
    hop_length: int = Field(default=160, ge=1)

    @model_validator(mode="after")
    def _window_fits(self) -> FrameParams:
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length ({self.win_length}) must be <= n_fft ({self.n_fft})")
        return self


class MFCCParams(Strict):
    n_mfcc: int = Field(default=40, ge=1, le=128)
    n_mels: int = Field(default=64, ge=8, le=256)
    deltas: Literal[0, 1, 2] = 0


class ChromaParams(Strict):
    n_chroma: int = Field(default=12, ge=1)


class MelParams(Strict):
    n_mels: int = Field(default=64, ge=8, le=256)
    fmin: float = Field(default=0.0, ge=0)
    fmax: float | None = None


class ContrastParams(Strict):
    n_bands: int = Field(default=6, ge=1, le=8)
    fmin: float = Field(default=200.0, gt=0)


class TonnetzParams(Strict):
    # Tonnetz runs harmonic/percussive separation first (~110 ms per 3 s clip):
    # never in a default config.
    harmonic: bool = True


class ProsodyParams(Strict):
    # Pitch by YIN (librosa.yin: ~6 ms per 3 s clip; pYIN costs ~40x more).
    fmin: float = Field(default=60.0, gt=0)
    fmax: float = Field(default=500.0, gt=0)
    pitch_frame: int = Field(default=1024, ge=64)  # samples; must hold two periods of fmin

    @model_validator(mode="after")
    def _range(self) -> ProsodyParams:
        if self.fmax <= self.fmin:
            raise ValueError(f"fmax ({self.fmax}) must be above fmin ({self.fmin})")
        return self


class EGeMAPSParams(Strict):
    feature_set: Literal["eGeMAPSv02"] = "eGeMAPSv02"  # 88 functionals


class ComParEParams(Strict):
    feature_set: Literal["ComParE_2016"] = "ComParE_2016"  # 6,373 functionals


class AugmentConfig(Strict):
    """Train-only augmentation applied in the tf.data pipeline (sequence mode)."""

    time_masks: int = Field(default=0, ge=0)
    time_mask_width: int = Field(default=20, ge=1)
    feature_masks: int = Field(default=0, ge=0)
    feature_mask_width: int = Field(default=8, ge=1)
    gaussian_noise: float = Field(default=0.0, ge=0)
    # Pooled mode only: mixup (Zhang et al., 2018). Each training vector is blended with
    # another of its batch, x = l*a + (1-l)*b and likewise its one-hot target, with
    # l ~ Beta(mixup, mixup) drawn per example; 0 turns it off, 0.2-0.4 is usual.
    mixup: float = Field(default=0.0, ge=0)
    # Pooled vectors with speaker normalisation only: train as served. Beside each
    # training clip normalised by all of its speaker's clips, this many copies of it
    # normalised as a served clip would be: by the average training speaker alone, or by
    # a random number of its speaker's clips (itself among them) blended with it, as a
    # speaker session does (ser.inference.SpeakerSession). 0 turns it off.
    session_copies: int = Field(default=0, ge=0, le=32)
    # Sequence mode with features.normalisation speaker only: train as served. Beside
    # each training clip's frames normalised by its speaker's clips, a copy normalised
    # as a served clip's frames are, by the average training speaker (frame_prior.json).
    served_frames: bool = False
    # Recording conditions (ser.perturb, e.g. "telephone", "noise:pink:15", "babble:10",
    # "mp3:32", "reverb:0.4", "gain:-20") to train on: beside each training clip,
    # condition_copies copies of its audio, each in one condition drawn from the list
    # (seeded), with features extracted from the changed audio (cached) and normalised
    # as a speaker of their own per condition. Training speakers only. 0 turns it off.
    conditions: list[str] = []
    condition_copies: int = Field(default=0, ge=0, le=16)


class FeaturesConfig(Strict):
    extractors: list[ExtractorName] = Field(default=["mfcc"], min_length=1)
    mode: Literal["sequence", "pooled"] = "sequence"
    pooling: list[PoolingName] = ["mean", "std"]
    frame: FrameParams = FrameParams()
    mfcc: MFCCParams = MFCCParams()
    chroma: ChromaParams = ChromaParams()
    mel: MelParams = MelParams()
    contrast: ContrastParams = ContrastParams()
    tonnetz: TonnetzParams = TonnetzParams()
    prosody: ProsodyParams = ProsodyParams()
    egemaps: EGeMAPSParams = EGeMAPSParams()
    compare: ComParEParams = ComParEParams()
    # Label-free z-normalisation of frame features before anything else sees them:
    # none | utterance (each clip by its own statistics) | speaker (each speaker by the
    # statistics of all their clips; speakers named "<corpus>:unknown" fall back to
    # utterance). The train-fitted global normaliser is applied after it either way.
    normalisation: Literal["none", "utterance", "speaker"] = "none"
    # Pooled mode only: z-normalise each speaker's pooled vectors by the statistics of
    # all their clips (label-free; one group per corpus for "<corpus>:unknown"). Worth
    # far more than frame-level speaker normalisation for utterance functionals. A
    # single clip at inference has no speaker statistics: see ser.inference.
    pooled_normalisation: Literal["none", "speaker"] = "none"
    # Cut each clip's leading and trailing silence before any extractor sees it (the
    # openSMILE sets too), in training and at inference alike: the edge frames (RMS over
    # win_length, every hop_length) more than trim_db dB below the clip's loudest frame,
    # as librosa.effects.trim(top_db=trim_db). A clip is kept whole when what is left
    # would be shorter than 0.1 s or one n_fft window, or when it is all zeros.
    # None: no trimming (and the cache keys of untrimmed features stay as they were).
    trim_db: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    # Cut each clip to its speech before any extractor sees it (after trim_db, before
    # loudness_db), in training and at inference alike: from this many seconds before
    # its first voiced run to as many after its last (ser.speech.speech_span: voicing,
    # which neither the level nor noise moves, unlike trim_db's energy). What is cut is
    # the silence, or a noisy recording's noise alone, around the speech. A clip with no
    # voiced run, or whose span would be shorter than 0.1 s or one n_fft window, is kept
    # whole. None: off (and the cache keys of such features stay as they were).
    speech_span: float | None = Field(default=None, ge=0, le=5, allow_inf_nan=False)
    # With speech_span: only voiced frames where the clip's level over 0.41 s is within
    # this many dB of its loud stretches (95th percentile) count toward the span
    # (ser.speech.foreground_frames), so other voices talking that far under the
    # speaker's (babble, a television), which are voiced too, do not stretch the span
    # over the whole clip. None: every voiced frame counts (and cache keys stay).
    speech_span_foreground_db: float | None = Field(default=None, gt=0, le=60, allow_inf_nan=False)
    # Bring each clip to this level (dBFS: RMS of its active frames, those within
    # ACTIVE_RANGE_DB of its loudest) before any extractor sees it, in training and at
    # inference alike, so the recording gain carries no weight: the same clip 30 dB
    # quieter gives the same features. None: clips are used at their recorded level
    # (and the cache keys of such features stay as they were).
    loudness_db: float | None = Field(default=None, le=0, ge=-80, allow_inf_nan=False)
    cache_dir: str = "data/cache"
    workers: int = Field(default=0, ge=0)  # 0 = one per core

    @property
    def speaker_normalised_frames(self) -> bool:
        """Sequence mode with ``normalisation: speaker``: such runs carry the average
        training speaker's frame statistics (``frame_prior.json``) for served clips."""
        return self.mode == "sequence" and self.normalisation == "speaker"

    @model_validator(mode="after")
    def _unique(self) -> FeaturesConfig:
        for name in ("extractors", "pooling"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} lists a name twice: {values}")
        if self.pooled_normalisation != "none" and self.mode != "pooled":
            raise ValueError("pooled_normalisation needs mode: pooled")
        if self.speech_span_foreground_db is not None and self.speech_span is None:
            raise ValueError("speech_span_foreground_db needs speech_span (the span it narrows)")
        utterance = [e for e in self.extractors if e in UTTERANCE_EXTRACTORS]
        if utterance and (
            len(self.extractors) > 1 or self.mode != "pooled" or self.pooling != ["mean"]
        ):
            raise ValueError(
                f"{utterance[0]} gives one row of functionals per clip: use it alone, with "
                "mode: pooled and pooling: [mean]"
            )
        return self


# ------------------------------------------------------------------------- models
# Statistics over a clip's real frames that models compute in the graph
# (``ser.models.layers.MaskedGlobalPooling``).
FrameStatName = Literal["mean", "std", "max", "min", "skew", "kurtosis", "slope", "delta"]


class LSTMConfig(Strict):
    """Stacked LSTM (``ser.models.lstm``)."""

    units: list[int] = Field(default=[128, 64], min_length=1)
    bidirectional: bool = False
    dropout: float = Field(default=0.3, ge=0, lt=1)
    dense_units: list[int] = [64]
    # How the recurrent outputs become one vector: last (the state at the final real
    # frame), stats (their mean and std over the real frames, x-vector style) or
    # attention (a learned weighting of the frames).
    pooling: Literal["last", "stats", "attention"] = "last"
    attention_units: int = Field(default=64, ge=1)  # pooling: attention
    # Max-pool the input frames over this many before the LSTMs: fewer, coarser steps
    # (4 = 40 ms at a 10 ms hop), several times faster to train. 1 = every frame.
    frame_pool: int = Field(default=1, ge=1, le=32)
    # What each pooled step holds: [max] max-pools the frames; any other statistics
    # (e.g. [mean, std] with frame_pool 25) make each step those functionals of its
    # window of frames (250 ms segments), read by the LSTMs as a shorter sequence.
    frame_pool_stats: list[FrameStatName] = Field(default=["max"], min_length=1)
    # A second branch beside the LSTMs: these statistics of the input frames over the
    # clip (computed in the model, so served exactly as trained), batch-normalised and
    # read by the head together with the pooled recurrent output. [] = no branch.
    functionals: list[FrameStatName] = []

    @field_validator("functionals", "frame_pool_stats")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"lists a statistic twice: {value}")
        return value

    @model_validator(mode="after")
    def _windows_to_pool(self) -> LSTMConfig:
        if self.frame_pool_stats != ["max"] and self.frame_pool == 1:
            raise ValueError(
                f"frame_pool_stats {self.frame_pool_stats} are statistics of windows of "
                "frames: set frame_pool above 1 (e.g. 25 for 250 ms)"
            )
        return self


class CNNConfig(Strict):
    filters: list[int] = Field(default=[64, 128, 128], min_length=1)
    kernel_size: int = Field(default=5, ge=1)
    pool_size: int = Field(default=2, ge=1)
    dropout: float = Field(default=0.3, ge=0, lt=1)
    dense_units: list[int] = [64]


class CRNNConfig(Strict):
    """The CNN's convolution blocks, a bidirectional GRU or LSTM, attention pooling."""

    filters: list[int] = Field(default=[64, 128], min_length=1)
    kernel_size: int = Field(default=5, ge=1)
    pool_size: int = Field(default=2, ge=1)
    rnn: Literal["gru", "lstm"] = "gru"
    rnn_units: int = Field(default=64, ge=1)  # per direction
    attention_units: int = Field(default=64, ge=1)  # hidden tanh units of the frame scorer
    dropout: float = Field(default=0.3, ge=0, lt=1)
    dense_units: list[int] = [64]


class TCNConfig(Strict):
    """A dilated temporal convolution network (``ser.models.tcn``), in the spirit of
    TIM-Net (Ye et al., 2023): residual blocks of two dilated convolutions each, the
    dilation doubling block by block, every block's output pooled over the clip and the
    pools read together (several time scales at once)."""

    filters: int = Field(default=64, ge=1)
    kernel_size: int = Field(default=3, ge=2)
    # One residual block per entry: its convolutions' dilation (in steps after frame_pool).
    dilations: list[int] = Field(default=[1, 2, 4, 8, 16], min_length=1)
    # Max-pool the input frames over this many first (4 = 40 ms steps at a 10 ms hop).
    frame_pool: int = Field(default=4, ge=1, le=32)
    dropout: float = Field(default=0.3, ge=0, lt=1)
    dense_units: list[int] = [128]

    @field_validator("dilations")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(d < 1 for d in value):
            raise ValueError(f"dilations must be >= 1, got {value}")
        return value


class DenseConfig(Strict):
    units: list[int] = Field(default=[256, 128], min_length=1)
    dropout: float = Field(default=0.3, ge=0, lt=1)
    input_dropout: float = Field(default=0.0, ge=0, lt=1)  # on the pooled features themselves


ModelType = Literal["lstm", "cnn", "crnn", "tcn", "dense"]


class ModelConfig(Strict):
    type: ModelType = "lstm"
    # Members of a seed ensemble: each is trained with seed, seed+1, ... and keeps its
    # own best validation epoch; the saved model averages their probabilities.
    ensemble: int = Field(default=1, ge=1, le=32)
    # With an ensemble, > 0 distils it into one network that is served alone: after the
    # members, a student (seed + ensemble) is trained on (1 - distill) x one-hot +
    # distill x the members' averaged probabilities on each training example, softened
    # by distill_temperature (p ** (1 / T), renormalised). 0 serves the members' average.
    distill: float = Field(default=0.0, ge=0, le=1)
    distill_temperature: float = Field(default=2.0, gt=0, le=20)
    # Which probabilities the student learns from: ``ensemble``, the members' average on
    # every training example (which they all trained on); ``held_out``, member k trains
    # without the k-th of ``ensemble`` groups of training speakers (of clips, with fewer
    # speakers than members) and gives that group's probabilities alone, so each
    # example's teacher never heard its speaker, as a test speaker is never heard.
    distill_teacher: Literal["ensemble", "held_out"] = "ensemble"
    # An ensemble across model types: member k is a ``member_types[k]`` network (each
    # with its own section's parameters, e.g. ``lstm`` and ``tcn``), so members that err
    # differently are averaged; as many entries as ``ensemble`` members. Empty: every
    # member is a ``type`` network (a seed ensemble). A distilled student is ``type``.
    member_types: list[ModelType] = []
    lstm: LSTMConfig = LSTMConfig()
    cnn: CNNConfig = CNNConfig()
    crnn: CRNNConfig = CRNNConfig()
    tcn: TCNConfig = TCNConfig()
    dense: DenseConfig = DenseConfig()

    @model_validator(mode="after")
    def _members_listed(self) -> ModelConfig:
        if self.member_types and len(self.member_types) != self.ensemble:
            raise ValueError(
                f"model.member_types lists {len(self.member_types)} member type(s) for "
                f"model.ensemble {self.ensemble}: give one type per member"
            )
        return self

    @property
    def params(self) -> LSTMConfig | CNNConfig | CRNNConfig | TCNConfig | DenseConfig:
        """The parameters of the chosen model type."""
        return getattr(self, self.type)

    @property
    def label(self) -> str:
        """What the run's model is called in logs and reports: ``type``, or the member
        types joined by ``+`` for an ensemble across types (``lstm+tcn``)."""
        return "+".join(self.member_types) or self.type

    def member(self, k: int) -> ModelConfig:
        """This config for the ``k``-th ensemble member: its ``type`` is the member's."""
        if not self.member_types:
            return self
        return self.model_copy(update={"type": self.member_types[k]})


# ----------------------------------------------------------------------- training
class EarlyStoppingConfig(Strict):
    enabled: bool = True
    patience: int = Field(default=12, ge=1)


class ReduceLRConfig(Strict):
    enabled: bool = True
    patience: int = Field(default=5, ge=1)
    factor: float = Field(default=0.5, gt=0, lt=1)
    min_lr: float = Field(default=1e-5, ge=0)


class TrainConfig(Strict):
    epochs: int = Field(default=60, ge=1)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = Field(default=0.0, ge=0)
    class_weights: bool = True
    # Cross-entropy against (1 - s) * one-hot + s / classes; 0 is plain cross-entropy.
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    monitor: Literal["val_ua", "val_loss", "val_accuracy"] = "val_ua"
    # Polyak averaging: the weights validated, kept as the best epoch and served are an
    # exponential moving average of the trained weights over about this many epochs
    # (momentum 1 - 1 / (ema_epochs x batches per epoch)); training steps go on from
    # the trained weights. 0 = off: the trained weights themselves.
    ema_epochs: float = Field(default=0.0, ge=0, le=100)
    # Speaker-adversarial training: > 0 trains a speaker classifier on the embedding the
    # emotion layer reads, behind a gradient reversal of this weight, so the network
    # unlearns what tells its training speakers apart; the classifier is never served.
    speaker_adversarial: float = Field(default=0.0, ge=0, le=10)
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    # The learning rate over the epochs: ``plateau`` halves it when the monitored value
    # stalls (``reduce_lr``); ``cosine`` follows half a cosine from ``learning_rate`` at
    # the first epoch down to ``reduce_lr.min_lr`` after the last of ``epochs`` (set once
    # per epoch, so a resumed run gets the same rates), and ``reduce_lr`` is not used.
    schedule: Literal["plateau", "cosine"] = "plateau"
    reduce_lr: ReduceLRConfig = ReduceLRConfig()
    # After the model is chosen on the validation speakers, train it once more from the
    # start on the training and validation speakers together (their copies included)
    # for the chosen number of epochs, replaying the learning rates of the validated
    # fit; that network is served. More voices, the same recipe; the validation scores
    # reported are the validated fit's. Single networks only (model.ensemble 1).
    refit_with_validation: bool = False
    # What one epoch is when the training clips have copies (augment.condition_copies,
    # served_frames, session_copies): ``all`` passes over every clip and every copy;
    # ``clips`` takes as many examples as there are training clips from the shuffled pool
    # of clips and copies (the next epoch goes on where it stopped), so validation,
    # checkpoints, early stopping and the learning-rate schedule come once per that many.
    epoch_size: Literal["all", "clips"] = "all"
    # Sequence models: training batches are drawn from this many buckets of clips of
    # similar length (bounds at quantiles of the training clips' lengths), so a batch
    # is padded to little more than its own clips instead of to the longest clip that
    # the shuffle put beside them; 0 or 1 = one bucket (plain shuffled batches).
    length_buckets: int = Field(default=0, ge=0, le=64)
    # At most this many training clips of any one training speaker (drawn in turn from
    # each of the speaker's emotions, seeded), so one speaker with many clips (TESS's
    # 1,400 each) does not fill most of every epoch; validation and test keep every
    # clip. None keeps all.
    max_clips_per_speaker: int | None = Field(default=None, ge=1)
    distribute: Literal["none", "mirrored", "multi_worker"] = "none"
    run_name: FolderName | None = None  # default: <name>-<date>-<time>
    checkpoints_dir: str = "checkpoints"
    experiments_dir: str = "experiments"
    confusion_images: bool = True
    verbose: Literal[0, 1, 2] = 0  # Keras progress output; one line per epoch is always printed


# --------------------------------------------------------------------- evaluation
# Baselines are scikit-learn classifiers on pooled statistics of the run's cached
# frame features (``seed_mlp`` uses its own, the upstream recipe's). Each has its
# parameters and, under ``grid``, the values ``--grid`` searches with speaker-grouped
# folds of the training speakers (an empty list leaves that parameter fixed).
BaselineName = Literal[
    "svc",
    "random_forest",
    "hist_gradient_boosting",
    "knn",
    "mlp",
    "logistic_regression",
    "seed_mlp",
]
ClassWeight = Literal["balanced"] | None
Gamma = Literal["scale", "auto"] | float


class SVCGrid(Strict):
    C: list[float] = [1.0, 10.0, 100.0]
    gamma: list[Gamma] = ["scale", 0.001, 0.01]


class SVCParams(Strict):
    scale: bool = True  # standardise features (fitted on the training split)
    C: float = Field(default=10.0, gt=0)
    kernel: Literal["rbf", "linear", "poly", "sigmoid"] = "rbf"
    gamma: Gamma = "scale"
    class_weight: ClassWeight = "balanced"
    grid: SVCGrid = SVCGrid()


class RandomForestGrid(Strict):
    max_depth: list[int | None] = [None, 16]
    min_samples_leaf: list[int] = [1, 4]


class RandomForestParams(Strict):
    scale: bool = False
    n_estimators: int = Field(default=300, ge=1)
    max_depth: int | None = Field(default=None, ge=1)
    min_samples_leaf: int = Field(default=1, ge=1)
    max_features: Literal["sqrt", "log2"] | float = "sqrt"
    class_weight: Literal["balanced", "balanced_subsample"] | None = "balanced"
    grid: RandomForestGrid = RandomForestGrid()


class HistGradientBoostingGrid(Strict):
    learning_rate: list[float] = [0.05, 0.1]
    max_leaf_nodes: list[int] = [15, 31]


class HistGradientBoostingParams(Strict):
    scale: bool = False
    learning_rate: float = Field(default=0.1, gt=0)
    max_iter: int = Field(default=200, ge=1)
    max_leaf_nodes: int = Field(default=31, ge=2)
    l2_regularization: float = Field(default=0.0, ge=0)
    class_weight: ClassWeight = "balanced"
    # No early stopping: scikit-learn's holds out a random, speaker-dependent slice.
    grid: HistGradientBoostingGrid = HistGradientBoostingGrid()


class KNNGrid(Strict):
    n_neighbors: list[int] = [3, 7, 15]
    weights: list[Literal["uniform", "distance"]] = ["uniform", "distance"]


class KNNParams(Strict):
    scale: bool = True
    n_neighbors: int = Field(default=7, ge=1)
    weights: Literal["uniform", "distance"] = "distance"
    metric: Literal["euclidean", "manhattan", "cosine"] = "euclidean"
    grid: KNNGrid = KNNGrid()


class MLPGrid(Strict):
    alpha: list[float] = [0.0001, 0.001, 0.01]
    hidden_layer_sizes: list[list[int]] = [[128], [256, 128]]


class MLPParams(Strict):
    scale: bool = True
    hidden_layer_sizes: list[int] = Field(default=[256, 128], min_length=1)
    alpha: float = Field(default=0.001, ge=0)
    learning_rate_init: float = Field(default=0.001, gt=0)
    batch_size: int = Field(default=64, ge=1)
    max_iter: int = Field(default=300, ge=1)
    grid: MLPGrid = MLPGrid()


class LogisticRegressionGrid(Strict):
    C: list[float] = [0.01, 0.1, 1.0, 10.0]


class LogisticRegressionParams(Strict):
    scale: bool = True
    C: float = Field(default=1.0, gt=0)
    max_iter: int = Field(default=2000, ge=1)
    class_weight: ClassWeight = "balanced"
    grid: LogisticRegressionGrid = LogisticRegressionGrid()


class SeedMLPGrid(Strict):
    alpha: list[float] = [0.001, 0.01, 0.1]


class SeedMLPParams(Strict):
    """The upstream project's recipe, for reference: the utterance means of MFCC (40),
    chroma (12) and mel (128) frames, 180 numbers, into MLP(300) with its settings.
    Uses these features instead of the run's. Upstream fed power-mel means unscaled;
    this project's mel is in dB, which an unscaled MLP cannot fit, hence ``scale``."""

    scale: bool = True
    n_mfcc: int = Field(default=40, ge=1, le=128)
    n_chroma: int = Field(default=12, ge=1)
    n_mels: int = Field(default=128, ge=8, le=256)
    frame: FrameParams = FrameParams(n_fft=2048, win_length=2048, hop_length=512)
    hidden_layer_sizes: list[int] = Field(default=[300], min_length=1)
    alpha: float = Field(default=0.01, ge=0)
    batch_size: int = Field(default=256, ge=1)
    learning_rate: Literal["constant", "invscaling", "adaptive"] = "adaptive"
    max_iter: int = Field(default=500, ge=1)
    grid: SeedMLPGrid = SeedMLPGrid()


class CrossValidationConfig(Strict):
    # kfold: speaker-grouped folds (capped at a corpus's speaker count: TESS gives 2);
    # loso: one fold per speaker. Validation speakers come from each fold's training side.
    method: Literal["kfold", "loso"] = "kfold"
    folds: int = Field(default=5, ge=2)
    per_corpus: bool = True  # a model per corpus; false: one model on all corpora per fold
    # Also score the baselines on as many random (SPEAKER-DEPENDENT) splits, labelled so.
    speaker_dependent_reference: bool = False
    # Per-corpus method, overriding `method`, e.g. {ravdess: kfold, emodb: loso}.
    method_by_corpus: dict[CorpusName, Literal["kfold", "loso"]] = {}
    # Multi-corpus training (per_corpus only): e.g. {tess: [ravdess, emodb]} adds every
    # clip of those corpora, restricted to the tested corpus's emotions, to the training
    # side of each of its folds. Validation and test speakers stay the tested corpus's.
    extra_training_corpora: dict[CorpusName, list[CorpusName]] = {}


class EvaluationConfig(Strict):
    baselines: list[BaselineName] = [
        "svc",
        "random_forest",
        "hist_gradient_boosting",
        "knn",
        "mlp",
        "logistic_regression",
        "seed_mlp",
    ]
    grid: bool = False  # search each baseline's grid (training speakers only)
    grid_folds: int = Field(default=3, ge=2)  # speaker-grouped folds of the training split
    n_jobs: int = Field(default=1, ge=1)  # processes for forests and grid search
    plots: bool = True
    tensorboard: bool = True
    cv: CrossValidationConfig = CrossValidationConfig()
    svc: SVCParams = SVCParams()
    random_forest: RandomForestParams = RandomForestParams()
    hist_gradient_boosting: HistGradientBoostingParams = HistGradientBoostingParams()
    knn: KNNParams = KNNParams()
    mlp: MLPParams = MLPParams()
    logistic_regression: LogisticRegressionParams = LogisticRegressionParams()
    seed_mlp: SeedMLPParams = SeedMLPParams()

    @model_validator(mode="after")
    def _unique(self) -> EvaluationConfig:
        if len(set(self.baselines)) != len(self.baselines):
            raise ValueError(f"baselines lists a name twice: {self.baselines}")
        return self


class Config(Strict):
    name: FolderName = "ser"
    seed: int = 42
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    features: FeaturesConfig = FeaturesConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    @model_validator(mode="after")
    def _model_matches_features(self) -> Config:
        for kind in dict.fromkeys([self.model.type, *self.model.member_types]):
            wants = "pooled" if kind == "dense" else "sequence"
            if self.features.mode != wants:
                raise ValueError(
                    f"model type {kind!r} needs features.mode {wants!r}, got {self.features.mode!r}"
                )
        if self.augment.condition_copies and not self.augment.conditions:
            raise ValueError("augment.condition_copies needs augment.conditions to draw from")
        if self.augment.session_copies and self.features.pooled_normalisation != "speaker":
            raise ValueError("augment.session_copies needs features.pooled_normalisation: speaker")
        if self.augment.served_frames and not self.features.speaker_normalised_frames:
            raise ValueError(
                "augment.served_frames needs features.mode: sequence and "
                "features.normalisation: speaker"
            )
        if self.augment.mixup > 0 and self.features.mode != "pooled":
            raise ValueError("augment.mixup needs features.mode: pooled (the dense model)")
        return self

    @model_validator(mode="after")
    def _multi_worker_run_is_named(self) -> Config:
        # Every host must name the same run (a rerun of the command resumes it), and an
        # ensemble's finished members are known to the chief alone.
        if self.train.distribute == "multi_worker":
            if self.train.run_name is None:
                raise ValueError(
                    "train.distribute multi_worker needs train.run_name: every host names "
                    "the same run, and rerunning the command resumes it"
                )
            if self.model.ensemble > 1:
                raise ValueError("train.distribute multi_worker trains one model: model.ensemble 1")
        return self

    @model_validator(mode="after")
    def _refit_is_of_one_network(self) -> Config:
        if self.train.refit_with_validation and self.model.ensemble > 1:
            raise ValueError(
                "train.refit_with_validation refits one network: set model.ensemble 1, "
                "or train.refit_with_validation false"
            )
        return self

    @model_validator(mode="after")
    def _speaker_adversary_trains_on_one_process(self) -> Config:
        if self.train.speaker_adversarial > 0 and self.train.distribute != "none":
            raise ValueError(
                "train.speaker_adversarial trains on one process: set train.distribute "
                "none, or train.speaker_adversarial 0"
            )
        return self

    @model_validator(mode="after")
    def _distillation_has_a_teacher(self) -> Config:
        if self.model.distill > 0 and self.model.ensemble < 2:
            raise ValueError(
                "model.distill trains a network on an ensemble's probabilities: set "
                "model.ensemble to 2 or more (the teacher's members), or model.distill 0"
            )
        return self

    @model_validator(mode="after")
    def _folders_split_has_folders(self) -> Config:
        if self.split.method == "folders" and (
            self.data.corpora != ["custom"] or not self.data.custom.split_folders
        ):
            raise ValueError(
                "split.method 'folders' needs data.corpora: [custom] and "
                "data.custom.train_folder and data.custom.test_folder (e.g. train-custom, "
                "test-custom under data.root)"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ------------------------------------------------------------------------ loading
def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_mapping(path: Path) -> dict[str, Any]:
    """The top-level mapping of one YAML file, ``extends`` still in it."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def _extends_entries(path: Path, extends: Any) -> list[str]:
    """The file names an ``extends:`` value lists: one name, or a non-empty list of names."""
    if extends is None:
        return []
    if isinstance(extends, str):
        return [extends]
    if isinstance(extends, list) and extends and all(isinstance(e, str) for e in extends):
        return extends
    raise ConfigError(
        f"{path}: extends: must be a file name or a non-empty list of file names, got {extends!r}"
    )


def _parent_paths(path: Path, extends: Any) -> list[Path]:
    """The files an ``extends:`` value of ``path`` names, resolved relative to it."""
    parents = []
    for entry in _extends_entries(path, extends):
        parent = (path.parent / entry).resolve()
        if not parent.is_file():
            raise ConfigError(f"{path}: extends: {entry}: config file not found ({parent})")
        parents.append(parent)
    return parents


def parent_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files a config file ``extends``, resolved relative to it, in merge order.

    Raises ``ConfigError`` naming the file when ``extends:`` is neither a file name nor
    a list of them, or names a file that does not exist.
    """
    path = Path(path).resolve()
    return _parent_paths(path, _read_mapping(path).get("extends"))


def read_yaml(path: str | os.PathLike[str], seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping merged over the files it ``extends`` (not validated).

    ``extends:`` names one file or a list of files, relative to this one; a list is
    merged left to right (a later file wins), then this file's own keys win. ``seen``
    is the chain of files already being read, to report an ``extends`` loop.
    """
    path = Path(path).resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'extends' loops back to itself")
    own = _read_mapping(path)
    tree: dict[str, Any] = {}
    for parent in _parent_paths(path, own.pop("extends", None)):
        tree = _deep_merge(tree, read_yaml(parent, (*seen, path)))
    return _deep_merge(tree, own)


def set_path(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    """Set ``tree["a"]["b"]["c"] = value`` for ``dotted`` "a.b.c", creating sections.

    ``source`` names where the value came from, for the error when a key on the way
    is a value rather than a section.
    """
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {dotted}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"model.lstm.units=[64]"`` -> ``("model.lstm.units", [64])``."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.epochs=5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return model
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return model
    return model


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    path = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        valid = ", ".join(parent.model_fields) if parent else ""
        return f"{path}: unknown key (valid keys here: {valid})"
    message = error["msg"].removeprefix("Value error, ")
    given = error.get("input")
    if isinstance(given, (dict, list)) and len(repr(given)) > 80:
        return f"{path}: {message}"
    return f"{path}: {message} (got {given!r})"


def validate(tree: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a plain dict into a frozen ``Config``."""
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ConfigError(f"{source}: invalid config:\n  " + "\n  ".join(lines)) from None


# ------------------------------------------------------------- shipped configs
SHIPPED_CONFIGS_DIR = Path(__file__).parent / "configs"
"""The project's ``configs/`` folder as installed with the package (in a checkout,
``ser/configs`` links to ``configs/``; a wheel holds a copy), so that defaults and
``extends:`` chains resolve from any working directory."""
DEFAULT_CONFIG_NAME = "lstm.yaml"
CONFIG_LOOKUP_HELP = (
    "a relative path is looked up in the current folder first, then among the shipped "
    "configs (so lstm.yaml, configs/lstm.yaml and experiments/egemaps_spk.yaml work from "
    "any folder)"
)


def default_config_path() -> Path:
    """The config commands use when none is given: the shipped ``lstm.yaml``."""
    return SHIPPED_CONFIGS_DIR / DEFAULT_CONFIG_NAME


def _shipped_candidates(path: Path) -> list[Path]:
    """Where a relative ``path`` not found in the current folder may be shipped:
    ``x.yaml`` and ``configs/x.yaml`` both name ``<shipped>/x.yaml``."""
    candidates = [SHIPPED_CONFIGS_DIR / path]
    if path.parts[:1] == ("configs",) and len(path.parts) > 1:
        candidates.append(SHIPPED_CONFIGS_DIR.joinpath(*path.parts[1:]))
    return candidates


def find_config(path: str | os.PathLike[str]) -> Path:
    """The config file ``path`` names: as given (relative to the current folder), else,
    for a relative path, the shipped config of that name. ``ConfigError`` names both
    places when neither holds it."""
    given = Path(path)
    if given.is_file() or given.is_absolute():
        return given
    for candidate in _shipped_candidates(given):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"{given}: config file not found (looked in the current folder, {Path.cwd()}, "
        f"and among the shipped configs, {SHIPPED_CONFIGS_DIR.resolve()})"
    )


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Config:
    """Read a YAML file (or the defaults), apply SER_DATA_ROOT and overrides, validate.

    ``path`` is found by ``find_config``: relative to the current folder, else shipped.
    """
    env = os.environ if env is None else env
    source = str(path) if path is not None else "<defaults>"
    tree = read_yaml(find_config(path)) if path is not None else {}
    if env.get(DATA_ROOT_ENV):
        set_path(tree, "data.root", env[DATA_ROOT_ENV], source)
    for text in overrides:
        key, value = parse_override(text)
        set_path(tree, key, value, f"{source} (--set {text})")
    return validate(tree, source)


def save_config(cfg: Config, path: str | os.PathLike[str]) -> None:
    Path(path).write_text(cfg.to_yaml(), encoding="utf-8")
