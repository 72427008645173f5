"""ser: speech emotion recognition with Keras, from corpora to a served model.

Layers, each depending only on those below it (``tests/test_architecture.py``
checks that no import cycle exists):

- entry points: ``ser.cli`` and ``ser.commands`` (the ``ser`` console script),
  ``train.py`` and ``evaluate.py``; ``ser.serving`` (the HTTP service);
- experiments: ``ser.crossval`` (plan -> one fold -> summary), ``ser.evaluation``
  and ``ser.cross_corpus`` (a run against the baselines), ``ser.reports``
  (markdown, JSON, plots), ``ser.baselines`` (scikit-learn models), ``ser.export``;
- one model: ``ser.training`` (fit into a run directory), ``ser.inference``
  (``Predictor``: a run directory back to predictions);
- data and models: ``ser.data`` (corpora -> manifest -> split -> model inputs,
  tf.data), ``ser.features`` (extractors and their cache), ``ser.models``
  (builders), ``ser.datatools`` (download, convert, add recordings);
- foundations: ``ser.config`` (typed YAML configs), ``ser.runs`` (the run-directory
  layout), ``ser.metrics``, ``ser.audio`` (decoding), ``ser.registry``,
  ``ser.progress``.

docs/ARCHITECTURE.md follows one clip through training and through serving.
"""
