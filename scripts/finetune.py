"""Fine-tune a pretrained backbone into an evaluated, exported classifier. See `--help`."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_transfer.cli import main

if __name__ == "__main__":
    sys.exit(main())
