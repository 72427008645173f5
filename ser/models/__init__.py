"""Model builders: ``name -> (params, input_dim, num_classes) -> uncompiled keras.Model``.

Names equal the choices of ``ModelConfig.type``. Sequence models (lstm, cnn, crnn, tcn) take
``[batch, frames, input_dim]`` batches right-padded with all-zero frames and never
let the padding change a prediction; dense takes pooled ``[batch, input_dim]``
vectors. Every model ends in a float32 softmax layer named ``emotion``. Compiling,
losses and metrics belong to ``ser.training``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from ser.config import ModelConfig
from ser.models.cnn import build_cnn
from ser.models.crnn import build_crnn
from ser.models.dense import build_dense
from ser.models.lstm import build_lstm
from ser.models.tcn import build_tcn
from ser.registry import Registry

Builder = Callable[[Any, int, int], keras.Model]
MODELS: Registry[Builder] = Registry("model")
# Registered here rather than by decorators in each module, so the builders' modules
# never import this package back.
for _name, _builder in (
    ("lstm", build_lstm),
    ("cnn", build_cnn),
    ("crnn", build_crnn),
    ("tcn", build_tcn),
    ("dense", build_dense),
):
    MODELS.register(_name)(_builder)


def build_model(cfg: ModelConfig, input_dim: int, num_classes: int) -> keras.Model:
    """The uncompiled model ``cfg.type`` built from ``cfg.params``.

    ``input_dim`` is the feature size per frame (per clip for dense); the output is
    ``[batch, num_classes]`` class probabilities.
    """
    if input_dim < 1:
        raise ValueError(f"input_dim must be >= 1, got {input_dim}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return MODELS.get(cfg.type)(cfg.params, input_dim, num_classes)
