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
