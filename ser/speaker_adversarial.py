"""Speaker-adversarial training (``train.speaker_adversarial``): the emotion network
learns an embedding from which its training speakers cannot be told apart.

Beside the emotion output, a small speaker classifier reads the embedding the emotion
layer reads, through a gradient-reversal layer (Ganin and Lempitsky, 2015): the
classifier learns to name the training speaker, and the network below the embedding
receives the classifier's gradient reversed and scaled by the weight, so it unlearns
what tells the speakers apart. Speaker labels exist for training clips only; the
speaker head is never saved with the model: ``served_network`` is the plain emotion
network that validation, checkpoints, export and serving see.

Targets travel as one float matrix [N, classes + speakers] (the emotion target, one-hot
or probabilities, then the speaker's one-hot), so ``make_dataset`` batches them as it
batches any probability targets; class weights are applied inside the training step.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

# Units of the speaker classifier's hidden layer.
SPEAKER_HEAD_UNITS = 128


@keras.saving.register_keras_serializable(package="ser")
class GradientReversal(keras.layers.Layer):
    """The identity forward; backward, the incoming gradient times ``-weight``."""

    def __init__(self, weight: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.weight = float(weight)

    def call(self, inputs):
        weight = self.weight

        @tf.custom_gradient
        def reverse(x):
            return tf.identity(x), lambda upstream: -weight * upstream

        return reverse(inputs)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "weight": self.weight}


class SpeakerAdversarial(keras.Model):
    """Trains ``classifier`` (any model ending in the ``emotion`` layer) with a speaker
    classifier behind a gradient reversal on the emotion layer's input.

    ``call`` is the classifier's, so ``predict`` gives emotion probabilities. Targets
    are [B, classes + speakers] (``targets``); ``class_weights`` [classes] weight each
    example's emotion loss by its target (as Keras's ``class_weight`` would), whose
    cross-entropy takes ``label_smoothing`` as the plain model's loss does.
    """

    def __init__(
        self,
        classifier: keras.Model,
        speakers: int,
        weight: float,
        class_weights: np.ndarray | None = None,
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=classifier.name, **kwargs)
        self.classifier = classifier
        self.classes = int(classifier.output.shape[-1])
        embedding = classifier.get_layer("emotion").input
        self.body = keras.Model(classifier.inputs, [classifier.output, embedding])
        self.speaker_head = keras.Sequential(
            [
                GradientReversal(weight),
                keras.layers.Dense(SPEAKER_HEAD_UNITS, activation="relu"),
                keras.layers.Dense(speakers, activation="softmax", dtype="float32"),
            ],
            name="speaker_head",
        )
        self.speaker_head.build(embedding.shape)
        weights = np.ones(self.classes) if class_weights is None else class_weights
        self.class_weight_vector = tf.constant(np.asarray(weights, np.float32))
        self.label_smoothing = float(label_smoothing)
        self.trackers = {
            name: keras.metrics.Mean(name=name)
            for name in ("loss", "speaker_loss", "speaker_accuracy")
        }
        self.accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
        self.built = True  # its parts are built: epoch backups can save and restore it

    def call(self, inputs, training=None):
        return self.classifier(inputs, training=training)

    @property
    def metrics(self) -> list[Any]:
        return [*self.trackers.values(), self.accuracy]

    def train_step(self, data):
        x, targets = data[0], data[1]
        emotion, speaker = targets[:, : self.classes], targets[:, self.classes :]
        with tf.GradientTape() as tape:
            probabilities, embedding = self.body(x, training=True)
            speaker_probabilities = self.speaker_head(embedding, training=True)
            per_example = keras.losses.categorical_crossentropy(
                emotion, probabilities, label_smoothing=self.label_smoothing
            )
            example_weight = tf.linalg.matvec(emotion, self.class_weight_vector)
            emotion_loss = tf.reduce_mean(example_weight * per_example)
            speaker_loss = tf.reduce_mean(
                keras.losses.categorical_crossentropy(speaker, speaker_probabilities)
            )
            total = emotion_loss + speaker_loss + tf.add_n([0.0, *self.classifier.losses])
        variables = self.body.trainable_variables + self.speaker_head.trainable_variables
        self.optimizer.apply(tape.gradient(total, variables), variables)
        self.trackers["loss"].update_state(emotion_loss)
        self.trackers["speaker_loss"].update_state(speaker_loss)
        self.trackers["speaker_accuracy"].update_state(
            keras.metrics.categorical_accuracy(speaker, speaker_probabilities)
        )
        self.accuracy.update_state(emotion, probabilities)
        return {m.name: m.result() for m in self.metrics}


def served_network(model: keras.Model) -> keras.Model:
    """The network a run saves and serves: the emotion classifier of a
    ``SpeakerAdversarial`` trainer, any other model itself."""
    return model.classifier if isinstance(model, SpeakerAdversarial) else model


def targets(emotion: np.ndarray, speakers: np.ndarray, classes: int, count: int) -> np.ndarray:
    """[N, classes + count]: the emotion targets (class indices [N] or probabilities
    [N, classes]) beside each example's speaker (indices [N] into ``count``) one-hot."""
    emotion = np.asarray(emotion)
    if emotion.ndim == 1:
        emotion = np.eye(classes, dtype=np.float32)[emotion.astype(np.int64)]
    speaker = np.eye(count, dtype=np.float32)[np.asarray(speakers, np.int64)]
    return np.concatenate([emotion.astype(np.float32), speaker], axis=1)
