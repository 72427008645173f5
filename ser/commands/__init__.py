"""Subcommands of the ``ser`` console script, one module each (see ``ser.cli``)."""
