"""Import TensorFlow without its start-up chatter, keeping every real message.

TensorFlow's C++ side writes a few lines to the process's stderr (file descriptor 2)
while it loads: the absl "All log messages before absl::InitializeLog()" warning, the
oneDNN notice (once per native library) and the CPU-instructions notice. Since
TensorFlow 2.21 ``TF_CPP_MIN_LOG_LEVEL`` does not silence them, and
``TF_ENABLE_ONEDNN_OPTS=0`` would change the numerics of training. So the command
line imports TensorFlow here, once, with file descriptor 2 sent to a temporary file,
and writes back every captured line that is not one of those known notices: a real
error or warning during the import still reaches the user, in order.

After start-up TensorFlow does honour ``TF_CPP_MIN_LOG_LEVEL``, which defaults to 3
here: its C++ log lines at run time are notices such as "oneDNN supports DT_BOOL only
on platforms with AVX-512 ... Falling back", logged at error level on every
evaluation. A real failure reaches Python as an exception (printed as ``error: ...``
or a traceback), and fatal errors are printed whatever the level. ``--verbose`` (or
setting the variable yourself) shows everything.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from types import ModuleType

CHATTER_PATTERNS = (
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"oneDNN custom operations are on",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate",
    r"Could not find cuda drivers on your machine",
    r"Unable to register cu\w+ factory",
    r"computation placer already registered",
    r"failed call to cuInit",
    r"TF-TRT Warning: Could not find TensorRT",
)
STARTUP_CHATTER = re.compile("|".join(CHATTER_PATTERNS))
"""Lines TensorFlow prints on every start-up that tell the user nothing actionable."""


def is_startup_chatter(line: str) -> bool:
    """Whether ``line`` (one line of stderr) is a known TensorFlow start-up notice."""
    return STARTUP_CHATTER.search(line) is not None


def _without_chatter(text: str) -> str:
    """``text`` with its start-up notice lines removed, other lines kept in order."""
    kept = [line for line in text.splitlines(keepends=True) if not is_startup_chatter(line)]
    return "".join(kept)


def _import_with_stderr_captured() -> tuple[ModuleType, str]:
    """``import tensorflow`` with file descriptor 2 redirected; (module, captured text)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            captured = capture.read().decode("utf-8", errors="replace")
            # Re-emitted even when the import fails: its reasons are in there.
            sys.stderr.write(_without_chatter(captured))
            sys.stderr.flush()
    return tensorflow, captured


# Whether an import without an explicit ``verbose`` shows TensorFlow's notices: the
# command line's ``--verbose``, recorded by ``set_verbose`` for imports made on demand.
_VERBOSE = False


def set_verbose(verbose: bool) -> None:
    """Make later ``import_tensorflow()`` calls show (True) or drop TensorFlow's notices."""
    global _VERBOSE
    _VERBOSE = bool(verbose)


def import_tensorflow(verbose: bool | None = None) -> ModuleType:
    """The ``tensorflow`` module, imported without start-up chatter on stderr.

    ``verbose`` shows everything TensorFlow prints (and leaves ``TF_CPP_MIN_LOG_LEVEL``
    alone); otherwise that variable defaults to 3 (no C++ log lines below fatal after
    start-up) and the notices of ``STARTUP_CHATTER`` are dropped. Importing again, or
    after TensorFlow was already imported, changes nothing.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    if verbose is None:
        verbose = _VERBOSE
    if verbose:
        import tensorflow

        return tensorflow
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return _import_with_stderr_captured()[0]
