"""Writing files and folders so that they appear whole or not at all, numbered versions that never collide, and
one writer of a folder at a time."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import tempfile

logger = logging.getLogger(__name__)

_TEMPORARY = re.compile(r"^\.tmp-(\d+)-")
_RESERVATION = re.compile(r"^\.reserved-(\d+)$")


@contextlib.contextmanager
def atomic_path(path, *, replace_folder=False, work_dir=False):
    """Yields a temporary path beside `path` to write a file or folder to; renamed to `path` when the block
    ends without an error, removed when it raises. The temporary name keeps `path`'s extension
    (`.tmp-<pid>-<name>`), so writers that check it (`save_weights` wants `.weights.h5`) accept it.

    An existing file at `path` is replaced in one step. An existing folder is replaced only with
    `replace_folder=True` (removed just before the rename); otherwise it is a `FileExistsError`. With
    `work_dir=True`, the writer's own temporary files (Keras's `model.save` makes some) go to a folder beside
    `path` too, so a kill never leaves them in the system's temporary folder. Temporaries that killed processes
    left in the same folder are removed first.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    remove_stale_temporaries(folder)
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    work = os.path.join(folder, f".tmp-{os.getpid()}-work") if work_dir else None
    remove_path(tmp)
    try:
        with _temporaries_in(work):
            yield tmp
        if os.path.isdir(tmp) and os.path.isdir(path):
            if not replace_folder:
                raise FileExistsError(f"{path!r} exists; a folder is never replaced here")
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        remove_path(tmp)


@contextlib.contextmanager
def _temporaries_in(work):
    if work is None:
        yield
        return
    os.makedirs(work, exist_ok=True)
    previous, tempfile.tempdir = tempfile.tempdir, work
    try:
        yield
    finally:
        tempfile.tempdir = previous
        remove_path(work)


def replace(source, target):
    """Moves the finished file `source` onto `target` in one step (the rename that commits a write)."""
    os.replace(source, target)


def commit_gfile(temporary, path):
    """Renames the finished `temporary` onto `path` through `tf.io.gfile` (a local path or a bucket's, where
    TensorFlow's file systems reach): the rename that commits a write that `atomic_path` cannot (not local)."""
    import tensorflow as tf  # here: the rest of this module loads without TensorFlow

    tf.io.gfile.rename(temporary, path, overwrite=True)


def write_bytes_gfile(path, data):
    """Writes `data` to `path` through `tf.io.gfile`, under a temporary name first (see `commit_gfile`)."""
    import tensorflow as tf

    temporary = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(temporary, "wb") as f:
        f.write(data)
    commit_gfile(temporary, path)


def write_text(path, text):
    """Writes `text` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


@contextlib.contextmanager
def new_version(base, version=None):
    """Reserves a numbered version folder in `base` (TF Serving's layout) and yields `(version, tmp)`: an empty
    folder to write the version to, renamed to `base/<version>` when the block ends without an error.

    The reservation is an exclusive `os.mkdir` of `base/.reserved-<version>` (with the pid inside), so processes
    exporting into one base at once get different versions; None takes the next number after every version and
    reservation present. Nothing ever removes or replaces a version: an existing one is a `FileExistsError`.
    Reservations of dead processes are removed first.
    """
    base = os.fspath(base)
    os.makedirs(base, exist_ok=True)
    for name in os.listdir(base):
        match = _RESERVATION.match(name)
        if match and _reserved_by_dead(os.path.join(base, name)):
            remove_path(os.path.join(base, name))
    number = version or _next_version(base)
    while True:
        reservation = os.path.join(base, f".reserved-{number}")
        try:
            if os.path.exists(os.path.join(base, str(number))):
                raise FileExistsError(number)
            os.mkdir(reservation)
            break
        except FileExistsError:
            if version is not None:
                raise FileExistsError(f"version {number} exists (or is being written) in {base!r}") from None
            number += 1
    try:
        with open(os.path.join(reservation, "pid"), "w") as f:
            f.write(str(os.getpid()))
        tmp = os.path.join(reservation, "version")
        os.mkdir(tmp)
        yield number, tmp
        os.replace(tmp, os.path.join(base, str(number)))  # fails rather than replace a folder that has files
    finally:
        remove_path(reservation)


def versions(base):
    """The version numbers present in `base`, sorted (reservations not included)."""
    try:
        return sorted(int(n) for n in os.listdir(base) if n.isdigit())
    except FileNotFoundError:
        return []


def newest_version(base):
    """The folder of the newest numbered version in `base`, or `base` itself when it holds none (a version folder
    given as it is)."""
    numbered = versions(base) if os.path.isdir(base) else []
    return os.path.join(os.fspath(base), str(numbered[-1])) if numbered else os.fspath(base)


def _next_version(base):
    taken = versions(base)
    taken += [int(m.group(1)) for m in map(_RESERVATION.match, os.listdir(base)) if m]
    return max(taken, default=0) + 1


def _reserved_by_dead(reservation):
    try:
        with open(os.path.join(reservation, "pid")) as f:
            return not process_alive(int(f.read()))
    except (OSError, ValueError):
        return False  # being made right now: its pid is not written yet


def remove_stale_temporaries(folder):
    """Removes `.tmp-<pid>-*` entries of `atomic_path` in `folder` whose process no longer runs."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        match = _TEMPORARY.match(name)
        if match and not process_alive(int(match.group(1))):
            remove_path(os.path.join(folder, name))


def process_alive(pid):
    """Whether process `pid` runs (this one always does)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_path(path):
    """Removes a file, link or folder tree if it is there."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


# --- exclusive writers ------------------------------------------------------------------------------------------

_HELD = {}  # real path of a lock file -> [file descriptor, depth]: a process may enter its own lock again


@contextlib.contextmanager
def exclusive(folder, lock_path, what):
    """Holds `lock_path` (an `fcntl` lock with the holder's pid in it; `folder` is created) while the block runs:
    one writer of `folder` at a time, as `flock` gives. A lock left by a killed process is taken over (the kernel
    released it; a warning names the old pid).

    Raises:
        RuntimeError: when another live process holds the lock, naming `what` (e.g. "run folder"), the folder and
            the holder's pid.
    """
    os.makedirs(folder, exist_ok=True)
    path = os.path.realpath(lock_path)
    if path in _HELD:
        _HELD[path][1] += 1
        try:
            yield
        finally:
            _HELD[path][1] -= 1
        return
    fd = _take(path, folder, what)
    _HELD[path] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[path]
        with contextlib.suppress(OSError):
            os.remove(path)  # still holding it, so no other process can be between open and flock on this file
        os.close(fd)


def _take(path, folder, what):
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RuntimeError(
                f"The {what} {os.fspath(folder)!r} is in use by process {holder} (lock {path}). Wait for it "
                "to finish, stop it, or choose another folder."
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed the file between our open and flock: take the new one
            os.close(fd)
            continue
        previous = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if previous:
            logger.warning("Took over the lock of %s from process %s, which no longer runs.", folder, previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd
