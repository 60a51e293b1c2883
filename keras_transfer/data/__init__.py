"""tf.data input pipelines: image folders, tables (CSV files, DataFrames), TFDS names, NumPy arrays, the offline
sets and TFRecord shards.

Every source becomes the same records (`records.py`): labels in memory (one integer per image, or a 0/1 row per
image for several labels per image, decided once there), images read lazily. `load_dataset` selects classes,
draws the splits (`splits.py`: stratified, iterative for several labels; deterministic for a seed) and builds one
pipeline per split (`pipeline.py`: parallel decode + resize, cache, shuffle, batch, prefetch; uncached, image files
are shuffled by name before decoding). Images come out as float32 RGB in 0-255 at `image_size`; the model does its
own preprocessing. Bad files are found before training by their bytes, reported with path and reason, and left out.

One module per source kind: `folders`, `tables` (`Table`), `arrays` (and the offline sets), `tfds` (`Tfds`),
`shards` (`Shards`); `sources` tells which a value is. `shard_writer` writes any source as shards: it imports the
sources and none of them imports it.
"""

from keras_transfer.data.arrays import FASHION_MNIST_CLASSES, fashion_mnist_arrays
from keras_transfer.data.dataset import DatasetInfo, load_dataset
from keras_transfer.data.pipeline import check_data_service, start_data_service, with_known_size
from keras_transfer.data.records import SPLITS
from keras_transfer.data.shard_writer import write_shards
from keras_transfer.data.shards import Shards, check_shards
from keras_transfer.data.sources import source_from
from keras_transfer.data.tables import Table
from keras_transfer.data.tfds import Tfds

__all__ = [
    "FASHION_MNIST_CLASSES",
    "SPLITS",
    "DatasetInfo",
    "Shards",
    "Table",
    "Tfds",
    "check_data_service",
    "check_shards",
    "fashion_mnist_arrays",
    "load_dataset",
    "source_from",
    "start_data_service",
    "with_known_size",
    "write_shards",
]
