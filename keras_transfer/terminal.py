"""What a person at a terminal sees: TensorFlow's start-up lines kept off it, for entry points that ask.

Importing keras_transfer changes nothing in the process. The CLI, the scripts, the demo and the benchmarks call
`quiet_tensorflow()` first; a notebook or program may call it too (`kt.quiet_tensorflow()`), before TensorFlow is
imported for the start-up lines to stay hidden. Set KERAS_TRANSFER_VERBOSE=1 to see everything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys


@contextlib.contextmanager
def native_logs_hidden():
    """Within it, whatever TensorFlow's C++ side (or anything else) writes to file descriptor 2 is discarded:
    start-up lines, grappler's "Starting new session", CUDA probes, none of which a user can act on. Python
    exceptions still raise, and descriptor 2 is restored on leaving. With KERAS_TRANSFER_VERBOSE=1 nothing is
    hidden."""
    if os.environ.get("KERAS_TRANSFER_VERBOSE") == "1":
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no file descriptor 2 (some embedded interpreters): nothing to hide
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def quiet_tensorflow():
    """Keeps TensorFlow's start-up noise off the terminal, for the rest of the process: sets
    `TF_CPP_MIN_LOG_LEVEL=2` (unless already set), imports TensorFlow with its C++ start-up lines hidden (absl's
    pre-init warning, oneDNN, the CUDA probe: TF 2.21 prints them before the level applies) and sets
    TensorFlow's Python logger to errors only. Errors still raise. Does nothing with KERAS_TRANSFER_VERBOSE=1.

    Example:
    >>> import keras_transfer as kt
    >>> kt.quiet_tensorflow()
    """
    if os.environ.get("KERAS_TRANSFER_VERBOSE") == "1":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_logs_hidden():
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe ("failed call to cuInit") prints here
    tf.get_logger().setLevel(logging.ERROR)
    tf.autograph.set_verbosity(0)
