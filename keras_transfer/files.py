"""Writing files and folders so that they appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import re
import shutil

_TEMPORARY = re.compile(r"^\.tmp-(\d+)-")


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path` to write a file or folder to; renamed to `path` when the block
    ends without an error, removed when it raises. The temporary name keeps `path`'s extension
    (`.tmp-<pid>-<name>`), so writers that check it (`save_weights` wants `.weights.h5`) accept it.

    An existing file at `path` is replaced in one step; an existing folder is removed just before the rename.
    Temporaries that killed processes left in the same folder are removed first.
    """
    path = os.fspath(path)
    remove_stale_temporaries(os.path.dirname(path) or ".")
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    _remove(tmp)
    try:
        yield tmp
        if os.path.isdir(tmp) and os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def write_text(path, text):
    """Writes `text` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def remove_stale_temporaries(folder):
    """Removes `.tmp-<pid>-*` entries of `atomic_path` in `folder` whose process no longer runs."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        match = _TEMPORARY.match(name)
        if match and not _alive(int(match.group(1))):
            _remove(os.path.join(folder, name))


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)
