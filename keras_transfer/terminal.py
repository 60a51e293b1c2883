"""What a person at a terminal sees: TensorFlow's start-up lines kept off it, for entry points that ask.

Importing keras_transfer changes nothing in the process. The CLI, the scripts, the demo and the benchmarks call
`quiet_tensorflow()` first; a notebook or program may call it too (`kt.quiet_tensorflow()`), before TensorFlow is
imported for the start-up lines to stay hidden. Set KERAS_TRANSFER_VERBOSE=1 to see everything.
"""

from __future__ import annotations

import contextlib
import errno
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
    `TF_CPP_MIN_LOG_LEVEL=3` (unless already set: its C++ log lines up to errors, such as oneDNN's "supports DT_INT32
    only on platforms with AVX-512" when a ViT trains on such a CPU, which a user cannot act on; a failure still
    raises with its message), imports TensorFlow with its C++ start-up lines hidden (absl's pre-init warning,
    oneDNN, the CUDA probe: TF 2.21 prints them before the level applies) and sets TensorFlow's Python logger to
    errors only. Does nothing with KERAS_TRANSFER_VERBOSE=1.

    Example:
    >>> import keras_transfer as kt
    >>> kt.quiet_tensorflow()
    """
    if os.environ.get("KERAS_TRANSFER_VERBOSE") == "1":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with native_logs_hidden():
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe ("failed call to cuInit") prints here
    tf.get_logger().setLevel(logging.ERROR)
    tf.autograph.set_verbosity(0)


# The operating system's words for the failures a person can act on (disk full, no permission, ...): where a
# framework's message holds one below its first line, the one-line error shows it too.
OS_FAILURES = tuple(
    os.strerror(code)
    for code in (
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.EIO,
        errno.ENOENT,
        errno.EMFILE,
    )
)


def error_line(error):
    """One line for an exception that keeps its cause: the message's first line; and, where that line does not say
    it, the operating system's failure (`No space left on device`, ...) with its file, from a later line of the
    message (TensorFlow and h5py put it there) or from the exception that caused this one."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    if any(text in first for text in OS_FAILURES):
        return first
    cause = next((line for line in lines[1:] if any(text in line for text in OS_FAILURES)), None)
    linked = error.__cause__ or error.__context__
    while cause is None and linked is not None:
        if isinstance(linked, OSError) and linked.strerror:
            cause = str(linked)
        linked = linked.__cause__ or linked.__context__
    return f"{first} ({cause[:300]})" if cause else first
