"""Image files: the byte check that finds bad files before training, and the one decoder every entry point uses.

The folder pipeline, `serve_bytes` in an export, `FeatureIndex` and `scripts/predict.py` all decode with
`decode_image`, so they accept the same formats the same way.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

FORMATS = "JPEG, PNG, GIF, BMP or WebP"
# Leading bytes of the formats `tf.io.decode_image` reads; `serve_bytes` refuses anything else in-graph.
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"RIFF")


def find_images(folder):
    """Readable image files under `folder` (sorted, subfolders included, hidden files and folders ignored),
    and `(path, reason)` for every other file."""
    found, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(f for f in filenames if not f.startswith(".")):
            path = os.path.join(dirpath, filename)
            reason = image_problem(path)
            if reason:
                skipped.append((path, reason))
            else:
                found.append(path)
    return found, skipped


def image_files(items):
    """Readable image files among `items` (file paths, or folders searched like `find_images`), in order, and
    `(path, reason)` for the rest."""
    found, skipped = [], []
    for item in map(os.fspath, items):
        if os.path.isdir(item):
            files, bad = find_images(item)
            found += files
            skipped += bad
            continue
        reason = image_problem(item) if os.path.isfile(item) else "no such file"
        (skipped.append((item, reason)) if reason else found.append(item))
    return found, skipped


def image_problem(path):
    """Why the file at `path` cannot be used as an image, or None when it looks whole.

    Reads only the first and last bytes: recognizes JPEG, PNG, GIF, BMP and WebP by their signature and
    finds truncation by their end markers or declared sizes.
    """
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file (0 bytes)"
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(max(size - 1024, 0))
            tail = f.read()
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    if head.startswith(b"\xff\xd8\xff"):
        return None if b"\xff\xd9" in tail else "truncated JPEG (no end-of-image marker)"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return None if b"IEND" in tail else "truncated PNG (no IEND chunk)"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return None if b";" in tail[-16:] else "truncated GIF (no trailer)"
    if head.startswith(b"BM") and size >= 26:
        declared = int.from_bytes(head[2:6], "little")
        return None if declared <= size else f"truncated BMP ({size} of {declared} bytes)"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        declared = int.from_bytes(head[4:8], "little") + 8
        return None if declared <= size else f"truncated WebP ({size} of {declared} bytes)"
    return "not an image (expected JPEG, PNG, GIF, BMP or WebP)"



def decode_image(blob):
    """Encoded image bytes (a string tensor) -> `uint8` RGB tensor `(height, width, 3)`; works in a graph.

    `channels=3` turns grayscale, RGBA, palette and 16-bit images into RGB; a GIF gives its first frame.
    """
    image = tf.io.decode_image(blob, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def read_image(path):
    """The bytes of the image file at `path`, checked first with `image_problem`.

    Raises:
        ValueError: naming the file and what is wrong with it.
    """
    reason = image_problem(path) if os.path.isfile(path) else "no such file"
    if reason:
        raise ValueError(f"Cannot read the image {path!r}: {reason}. Received: {path!r}")
    with open(path, "rb") as f:
        return f.read()


def image_array(blob, name="image"):
    """Encoded bytes -> float32 NumPy array `(height, width, 3)` in 0-255, eagerly.

    Raises:
        ValueError: when the bytes are not a readable image, naming `name`.
    """
    try:
        image = decode_image(blob)
    except (tf.errors.InvalidArgumentError, ValueError) as e:
        raise ValueError(f"{name!r} is not a readable {FORMATS} image: {str(e).splitlines()[0][:200]}") from None
    return np.asarray(image, np.float32)
