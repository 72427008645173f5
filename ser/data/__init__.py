"""From audio files to model inputs, in the order the data flows.

``corpora`` reads each corpus's folder into manifest rows (path, corpus, speaker,
emotion, ...); ``splits`` turns rows into speaker-independent train/validation/test
splits and cross-validation folds; ``prepare`` takes a config (or a saved run)
through manifest, split and the feature cache to model inputs and integer targets;
``pipeline`` holds the normalisers and the one tf.data builder that feeds them to
Keras.
"""
