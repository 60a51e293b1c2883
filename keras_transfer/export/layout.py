"""The export's files, named in one table: what a SavedModel version folder holds beside its graph, and what an
exported file has beside it. Every module that writes or reads one asks here."""

from __future__ import annotations

import os

FILES = {  # key -> file name inside a SavedModel version folder
    "graph": "saved_model.pb",
    "labels": "labels.txt",
    "metadata": "metadata.json",
}
BESIDE = {  # key -> the name of a file beside an exported file `<stem>.<ext>`
    "labels": "{stem}.labels.txt",
}


def beside(path, key):
    """The path of the `key` file beside the exported file `path` (e.g. `model.onnx` -> `model.labels.txt`)."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, BESIDE[key].format(stem=os.path.splitext(name)[0]))


def version_file(version_dir, key):
    """The path of the `key` file in a SavedModel version folder."""
    return os.path.join(os.fspath(version_dir), FILES[key])
