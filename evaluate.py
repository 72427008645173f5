"""Evaluate a trained run: ``python evaluate.py checkpoints/best``.

Same as ``ser evaluate``; see ``python evaluate.py --help`` (cross-corpus with
``--corpus``, speaker-grouped cross-validation with ``--cv``).
"""

import sys

from ser.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
