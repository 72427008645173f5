"""Train a speech emotion model: ``python train.py --config configs/lstm.yaml``.

Same as ``ser train``; see ``python train.py --help``.
"""

import sys

from ser.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
