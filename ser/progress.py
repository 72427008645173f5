"""How long-running work talks to the user.

Every stage that can take more than a moment (manifest building, feature
extraction, training, evaluation, cross-validation, downloads) takes a ``log``
callable: ``print`` on the command line, a list's ``append`` in tests, a file
writer in cross-validation's detail log. Progress bars are tqdm's, drawn on stderr.
"""

from __future__ import annotations

from collections.abc import Callable

Log = Callable[[str], None]
"""One line of progress for the user, without a trailing newline."""


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True):
    """A tqdm bar on stderr for ``total`` steps, drawn only when ``enabled`` and stderr
    is a terminal (never into logs or pipes); removed when done."""
    import sys

    from tqdm import tqdm

    quiet = not enabled or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, leave=False)


def above_bar(bar, log: Log) -> Log:
    """``log`` for lines written while ``bar`` is drawn, without breaking the bar."""

    def say(line: str) -> None:
        with bar.external_write_mode():
            log(line)

    return say
