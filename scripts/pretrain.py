"""`keras-transfer pretrain`, kept as a script: see `keras-transfer pretrain --help`."""

import sys

from keras_transfer.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
