"""`keras-transfer predict`, kept as a script: see `keras-transfer predict --help`."""

import sys

from keras_transfer.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
