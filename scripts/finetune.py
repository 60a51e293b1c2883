"""Fine-tune a pretrained backbone into an evaluated, exported classifier. See `--help`."""

import sys

from keras_transfer.cli import main

if __name__ == "__main__":
    sys.exit(main())
