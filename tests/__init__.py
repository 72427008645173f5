"""The test suite: unit tests on tiny generated audio, a few marked ``corpus`` tests on
the real corpora under ``SER_DATA_ROOT``. Shared fixtures are in ``conftest.py``, shared
helpers (generated corpora, the tiny trained run, the bad-input catalogue) in
``tests/support/``."""
