"""`keras-transfer export`, kept as a script: see `keras-transfer export --help`."""

import sys

from keras_transfer.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
