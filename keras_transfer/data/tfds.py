"""TensorFlow Datasets as a source: `"tfds:NAME"` or `Tfds(NAME, data_dir=...)`."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import tensorflow as tf

from keras_transfer.data.folders import SPLIT_FOLDERS
from keras_transfer.data.pipeline import paired, resize
from keras_transfer.data.records import Records

TFDS_DEADLINE_S = 30  # the default `Tfds.deadline_s`


@dataclasses.dataclass(frozen=True)
class Tfds:
    """A TensorFlow Datasets name (`"tfds:NAME"` is the same with the defaults).

    Args:
        name: the TFDS name, e.g. `"tf_flowers"`.
        data_dir: the TFDS data directory (default: TFDS's own, `~/tensorflow_datasets`).
        deadline_s: seconds to wait for a download before giving up with a message on preparing it offline
            (TFDS itself retries a failing download for minutes).
    """

    name: str
    data_dir: object = None
    deadline_s: float = TFDS_DEADLINE_S

    def records(self):
        return tfds_records(self.name, self.data_dir, self.deadline_s)


def tfds_records(name, data_dir, deadline_s=TFDS_DEADLINE_S):
    import tensorflow_datasets as tfds  # imported here: it is slow to import and only this source needs it

    builder = tfds.builder(name, data_dir=data_dir)
    _prepare_with_deadline(builder, name, data_dir, deadline_s)
    class_names = list(builder.info.features[builder.info.supervised_keys[1]].names)
    available = set(builder.info.splits.keys()) or {"train"}  # mocked datasets list no splits
    splits = {"train": "train"}
    for split, names in SPLIT_FOLDERS.items():
        found = next((n for n in names if n in available), None)
        if found and split != "train":
            splits[split] = found
    image_key, label_key = builder.info.supervised_keys
    gray = builder.info.features[image_key].shape[-1] == 1

    def labels_of(split_name):
        # Labels only: the images are not decoded for this pass.
        ds = builder.as_dataset(split=split_name, decoders={image_key: tfds.decode.SkipDecoding()}, shuffle_files=False)
        return np.fromiter(ds.map(lambda example: example[label_key]).as_numpy_iterator(), dtype=np.int64)

    labels = {split: labels_of(split_name) for split, split_name in splits.items()}

    def images(split, idx):
        keep = np.zeros(len(labels[split]), dtype=bool)
        keep[idx] = True
        keep = tf.constant(keep)
        ds = builder.as_dataset(split=splits[split], as_supervised=True, shuffle_files=False)
        ds = ds.enumerate().filter(lambda i, example: tf.gather(keep, i)).map(lambda i, example: example[0])
        return paired(ds, lambda image, size: resize(tf.image.grayscale_to_rgb(image) if gray else image, size))

    return Records(f"tfds:{name}", class_names, list(range(len(class_names))), labels, images)


def _prepare_with_deadline(builder, name, data_dir, deadline_s):
    """`download_and_prepare` that gives up after `deadline_s` with a message on preparing offline."""
    outcome = {}

    def run():
        try:
            builder.download_and_prepare()
        except BaseException as e:  # reported to the caller below
            outcome["error"] = e

    thread = threading.Thread(target=run, name=f"tfds-prepare-{name}", daemon=True)
    thread.start()
    thread.join(deadline_s)
    if thread.is_alive() or "error" in outcome:
        why = f"not prepared within {deadline_s:g} s" if thread.is_alive() else str(outcome["error"])
        where = data_dir or "~/tensorflow_datasets"
        raise OSError(
            f"TFDS dataset {name!r} is not prepared in {where} and could not be downloaded ({why}). "
            f"To use it offline: on a machine with internet run `tfds build {name} --data_dir DIR` (or "
            f"`tfds.load({name!r}, data_dir=DIR)`), copy DIR here and pass data_dir=DIR."
        ) from outcome.get("error")
