"""`keras-transfer retrieve`, kept as a script: see `keras-transfer retrieve --help`."""

import sys

from keras_transfer.cli import main

if __name__ == "__main__":
    sys.exit(main(["retrieve", *sys.argv[1:]]))
