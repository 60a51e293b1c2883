"""Peak resident memory of a command, and what it was printing when the peak came.

Runs the command, samples its resident set size (VmRSS, Linux) twice a second, and prints its output with the
seconds since the start, then the peak, the line printed just before it, and the RSS every 10 seconds. Usage:

    python bench/peak_memory.py -- .venv/bin/python scripts/demo.py --output /tmp/demo
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time


def rss_mb(pid):
    """The process's resident set size in MB, or None once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS"))
    except (OSError, StopIteration):
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    state = {"peak": 0, "at": "", "last": "", "series": []}

    def sample():
        while (rss := rss_mb(process.pid)) is not None and process.poll() is None:
            seconds = time.perf_counter() - start
            if rss > state["peak"]:
                state["peak"], state["at"] = rss, f"{seconds:.0f} s, after: {state['last']}"
            if not state["series"] or seconds - state["series"][-1][0] >= 10:
                state["series"].append((seconds, rss))
            time.sleep(0.5)

    threading.Thread(target=sample, daemon=True).start()
    for line in process.stdout:
        state["last"] = line.strip()[:100]
        print(f"{time.perf_counter() - start:6.1f} {line}", end="", flush=True)
    code = process.wait()
    print(f"\npeak resident memory {state['peak']} MB at {state['at']}")
    print("resident MB every 10 s: " + " ".join(f"{s:.0f}s:{r}" for s, r in state["series"]))
    return code


if __name__ == "__main__":
    sys.exit(main())
