"""A hook that counts a process's file writes and SIGKILLs it right after the k-th: every `os.replace` /
`os.rename` and every file opened for writing with `open` when it is closed. Used by the kill sweep in
test_runs.py (`install` is called in a forked child before the run starts)."""

import builtins
import io
import os
import re
import signal


def install(kill_at=0, log=None):
    """Counts writes from now on; appends `n kind path` lines to `log`; kills the process right after write number
    `kill_at`, or, for `kill_at=(pattern, m)`, after the m-th write whose `kind path` matches the regular
    expression `pattern` (a write named this way is the same write in every run, although the number of writes
    before it may differ: how many example images a report writes depends on the last digits of the weights)."""
    opened, replace, rename, count, matches = builtins.open, os.replace, os.rename, [0], [0]
    pattern, occurrence = (re.compile(kill_at[0]), kill_at[1]) if isinstance(kill_at, (list, tuple)) else (None, 0)

    def event(kind, path):
        count[0] += 1
        line = f"{kind} {os.fspath(path)}"
        if log:
            with opened(log, "a") as f:
                f.write(f"{count[0]} {line}\n")
        matches[0] += bool(pattern and pattern.search(line))
        if count[0] == kill_at or (pattern and matches[0] == occurrence):
            os.kill(os.getpid(), signal.SIGKILL)

    class Tracked:
        def __init__(self, f, path):
            self._f, self._path = f, path

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

        def __iter__(self):
            return iter(self._f)

        def close(self):
            was_closed = self._f.closed
            self._f.close()
            if not was_closed:
                event("close", self._path)

    def tracked_open(file, mode="r", *args, **kwargs):
        f = opened(file, mode, *args, **kwargs)
        writes = isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+")
        return Tracked(f, file) if writes else f

    def tracked_replace(src, dst, *args, **kwargs):
        replace(src, dst, *args, **kwargs)
        event("replace", dst)

    def tracked_rename(src, dst, *args, **kwargs):
        rename(src, dst, *args, **kwargs)
        event("rename", dst)

    builtins.open = io.open = tracked_open
    os.replace, os.rename = tracked_replace, tracked_rename
