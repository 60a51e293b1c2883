"""Writing files and folders so that they appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path` to write a file or folder to; renamed to `path` when the block
    ends without an error, removed when it raises. The temporary name keeps `path`'s extension
    (`.tmp-<pid>-<name>`), so writers that check it (`save_weights` wants `.weights.h5`) accept it.

    An existing file at `path` is replaced in one step; an existing folder is removed just before the rename.
    """
    path = os.fspath(path)
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    _remove(tmp)
    try:
        yield tmp
        if os.path.isdir(tmp) and os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)
