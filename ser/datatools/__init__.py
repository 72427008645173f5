"""Getting audio in: download corpora, convert recordings, add custom files, summarise.

Each module backs one ``ser data`` subcommand (``ser.commands.data``):
``download`` (+ ``sources``), ``convert``, ``custom`` and ``summary``. Problems a
user can fix raise ``DataToolError`` (a ``RuntimeError``) with one clear message.
"""

from __future__ import annotations


class DataToolError(RuntimeError):
    """A problem the user can fix; the message says what happened and what to do."""
