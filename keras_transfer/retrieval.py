"""Image retrieval: find the images most like a given one, with a pretrained backbone or a fine-tuned model.

`FeatureIndex` embeds images with a model's pooled features (`head_pool` of a `build_model` model, or global
average pooling over a bare backbone), L2-normalises them, and answers top-k queries by cosine similarity:
exactly with NumPy, or approximately with a faiss HNSW graph when faiss-cpu is installed and asked for.
`retrieval_metrics` scores embeddings on labelled data (relevant = same class): recall@k and mAP.
"""

from __future__ import annotations

import json
import os

import numpy as np

from keras_transfer.files import atomic_path
from keras_transfer.images import image_array, image_files, read_image
from keras_transfer.models import build_model, feature_extractor, feature_model, input_size

SEARCHES = ("exact", "faiss")
INDEX_FILES = ("embeddings.npy", "index.json", "embedder.keras")


class FeatureIndex:
    """A searchable collection of L2-normalised image embeddings, each with a path (or None) and a label (or -1).

    Args:
        model: a model from `build_model` (its `head_pool` features are used), a Keras model whose output is a
            feature map (globally average-pooled) or a vector, or a backbone key such as `"resnet50"`.
        weights: the backbone weights when `model` is a backbone key (`"imagenet"`, None or a file).
        image_size: input side when `model` is a backbone key (default: the backbone's).
        batch_size: images per forward pass while indexing.
        search: `"exact"` (NumPy matrix product) or `"faiss"` (approximate: HNSW graph, needs faiss-cpu).

    Example:
    >>> import numpy as np
    >>> index = FeatureIndex("small_cnn", weights=None)
    >>> index.add(np.random.default_rng(0).uniform(0, 255, (5, 32, 32, 3)))
    5
    >>> [hit["index"] for hit in index.query(index.embeddings[2:3], k=1)[0]]
    [2]
    """

    def __init__(self, model, *, weights="imagenet", image_size=None, batch_size=32, search="exact"):
        if search not in SEARCHES:
            raise ValueError(
                f"Unknown search {search!r}. Expected one of: {', '.join(SEARCHES)}. Received: search={search!r}"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
        self.embedder = embedding_model(model, weights=weights, image_size=image_size)
        self.batch_size = batch_size
        self.search = search
        self.dim = int(self.embedder.output_shape[-1])
        self.embeddings = np.zeros((0, self.dim), np.float32)
        self.paths, self.labels = [], np.zeros((0,), np.int64)
        self._faiss = None
        self._embed = None

    def __len__(self):
        return len(self.embeddings)

    def add(self, source, labels=None):
        """Embeds and adds images; returns how many were added.

        Args:
            source: a folder (searched recursively; unreadable files are skipped and logged), a list of image
                paths, an array of images `(n, height, width, 3)` in 0-255, a `tf.data.Dataset` of image
                batches or `(images, labels)` batches (e.g. from `load_dataset`), or embeddings `(n, dim)`
                computed elsewhere (normalised here).
            labels: optional integer labels, one per image (a dataset's own labels are used otherwise).

        Raises:
            ValueError: for an empty or unreadable source, or labels that do not match the images in number.
        """
        vectors, paths, found_labels = self._embed_source(source)
        if labels is not None:
            labels = np.asarray(labels, np.int64).reshape(-1)
            if len(labels) != len(vectors):
                raise ValueError(
                    f"Got {len(labels)} labels for {len(vectors)} images; give one label per image. "
                    f"Received: labels of length {len(labels)}"
                )
        else:
            labels = found_labels if found_labels is not None else np.full(len(vectors), -1, np.int64)
        self._append(vectors, paths, labels)
        return len(vectors)

    def query(self, image, k=5):
        """The `k` most similar indexed images for each query.

        Args:
            image: an image path, encoded image bytes, an image array `(height, width, 3)`, a batch of images
                `(n, height, width, 3)` in 0-255, or already-computed embeddings `(n, dim)`.
            k: results per query (fewer when the index holds fewer images).

        Returns:
            A list with one list per query image (a single list for a single path, bytes or image) of
            `{"index", "score", "path", "label"}` dicts, best first; `score` is the cosine similarity.

        Raises:
            ValueError: for an empty index, `k < 1`, or a query that is not a readable image.
        """
        if not len(self):
            raise ValueError("The index is empty; add images with FeatureIndex.add(...) before querying.")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer. Received: k={k!r}")
        single = isinstance(image, (str, os.PathLike, bytes)) or (np.ndim(image) == 3)
        vectors = self.embed(image)
        scores, ids = self.search_vectors(vectors, min(k, len(self)))
        hits = [
            [
                {"index": int(i), "score": float(s), "path": self.paths[i], "label": int(self.labels[i])}
                for s, i in zip(row_scores, row_ids)
                if i >= 0
            ]
            for row_scores, row_ids in zip(scores, ids)
        ]
        return hits[0] if single else hits

    def embed(self, image):
        """L2-normalised embeddings `(n, dim)` of a path, bytes, image, batch of images or embeddings."""
        if isinstance(image, (str, os.PathLike)):
            image = read_image(os.fspath(image))
        if isinstance(image, bytes):
            image = image_array(image, "query", size=input_size(self.embedder))[None]  # as the indexed files
        array = np.asarray(image, np.float32)
        if array.ndim == 2 and array.shape[1] == self.dim:
            return _normalise(array)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] != 3 or 0 in array.shape:
            raise ValueError(
                "A query must be an image path, encoded image bytes, an RGB image (height, width, 3), a batch "
                f"(n, height, width, 3) or embeddings (n, {self.dim}). Received: an array of shape {array.shape}"
            )
        return self._embed_arrays(array)

    def search_vectors(self, vectors, k):
        """`(scores, ids)`, each `(n, k)`, of the `k` indexed embeddings nearest to normalised `vectors`."""
        vectors = np.ascontiguousarray(vectors, np.float32)
        if self.search == "faiss":
            return self._faiss_index().search(vectors, k)
        similarities = vectors @ self.embeddings.T
        top = np.argpartition(-similarities, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(similarities, top, axis=1), axis=1, kind="stable")
        ids = np.take_along_axis(top, order, axis=1)
        return np.take_along_axis(similarities, ids, axis=1), ids

    def save(self, path):
        """Writes the index to a folder: embeddings, paths and labels, and the embedding model.

        The folder is written beside `path` and renamed into place, so a failed save leaves any previous
        index there whole.

        Raises:
            ValueError: when the parent folder cannot be written.
        """
        path = os.fspath(path)
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with atomic_path(path, replace_folder=True) as tmp:
                os.makedirs(tmp)
                np.save(os.path.join(tmp, "embeddings.npy"), self.embeddings)
                with open(os.path.join(tmp, "index.json"), "w") as f:
                    json.dump(
                        {
                            "paths": self.paths,
                            "labels": self.labels.tolist(),
                            "search": self.search,
                            "batch_size": self.batch_size,
                            "dim": self.dim,
                        },
                        f,
                    )
                self.embedder.save(os.path.join(tmp, "embedder.keras"))
        except PermissionError as e:
            raise ValueError(f"Cannot write the index to {path!r}: {e}. Received: path={path!r}") from e
        return path

    @classmethod
    def load(cls, path, *, search=None):
        """Reads a folder written by `save`; `search` overrides the saved search.

        Raises:
            ValueError: when `path` is not a saved index.
        """
        import keras

        path = os.fspath(path)
        missing = [name for name in INDEX_FILES if not os.path.isfile(os.path.join(path, name))]
        if missing:
            raise ValueError(
                f"{path!r} is not a saved FeatureIndex (missing {', '.join(missing)}). Received: path={path!r}"
            )
        facts, embeddings = _read_index(path)
        import keras_transfer.preprocessing  # noqa: F401  (registers BackbonePreprocessing for loading)

        try:
            embedder = keras.saving.load_model(os.path.join(path, "embedder.keras"), compile=False)
        except Exception as e:  # Keras raises several kinds for a file it refuses
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"The embedding model in {path!r} cannot be loaded: {why}") from e
        index = cls(embedder, batch_size=facts["batch_size"], search=search or facts["search"])
        if index.dim != embeddings.shape[1]:
            raise ValueError(
                f"{path!r} is not a consistent FeatureIndex: its embeddings have {embeddings.shape[1]} "
                f"dimensions, its model gives {index.dim}."
            )
        index._append(embeddings, facts["paths"], np.asarray(facts["labels"], np.int64))
        return index

    # --- internals ---------------------------------------------------------------------------------------------

    def _append(self, vectors, paths, labels):
        vectors = np.ascontiguousarray(vectors, np.float32)
        self.embeddings = np.concatenate([self.embeddings, vectors])
        self.paths += list(paths)
        self.labels = np.concatenate([self.labels, np.asarray(labels, np.int64)])
        if self._faiss is not None:
            self._faiss.add(vectors)  # HNSW grows incrementally

    def _faiss_index(self):
        if self._faiss is None:
            try:
                import faiss
            except ImportError as e:
                raise ImportError(
                    "search='faiss' needs faiss-cpu: pip install 'keras_transfer[faiss]' (or use search='exact')."
                ) from e
            self._faiss = faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
            self._faiss.hnsw.efSearch = 64
            self._faiss.add(self.embeddings)
        return self._faiss

    def _embed_arrays(self, images):
        import tensorflow as tf

        if self._embed is None:
            self._embed = feature_extractor(self.embedder)
        out = [
            self._embed(tf.constant(images[i : i + self.batch_size])).numpy()
            for i in range(0, len(images), self.batch_size)
        ]
        return _normalise(np.concatenate(out))

    def _embed_source(self, source):
        import tensorflow as tf

        if isinstance(source, tf.data.Dataset):
            vectors, labels = [], []
            for batch in source:
                images = batch[0] if isinstance(batch, tuple) else batch
                vectors.append(self._embed_arrays(np.asarray(images, np.float32)))
                if isinstance(batch, tuple):
                    labels.append(np.asarray(batch[1]).reshape(-1))
            if not vectors:
                raise ValueError("The dataset holds no images. Received: an empty tf.data.Dataset")
            vectors = np.concatenate(vectors)
            return vectors, [None] * len(vectors), np.concatenate(labels).astype(np.int64) if labels else None
        if isinstance(source, (str, os.PathLike)) or (
            isinstance(source, (list, tuple)) and source and isinstance(source[0], (str, os.PathLike))
        ):
            return self._embed_files(source)
        images = np.asarray(source, np.float32)
        if images.ndim == 2 and images.shape[1] == self.dim and len(images):
            return _normalise(images), [None] * len(images), None
        if images.ndim != 4 or images.shape[-1] != 3 or not len(images):
            raise ValueError(
                "add() takes a folder, a list of image paths, images (n, height, width, 3), a "
                f"tf.data.Dataset or embeddings (n, {self.dim}). Received: an array of shape {images.shape}"
            )
        return self._embed_arrays(images), [None] * len(images), None

    def _embed_files(self, source):
        import logging

        if isinstance(source, (str, os.PathLike)) and not os.path.isdir(source):
            raise ValueError(f"{os.fspath(source)!r} is not a folder. Received: source={os.fspath(source)!r}")
        files, skipped = image_files([source] if isinstance(source, (str, os.PathLike)) else source)
        for path, reason in skipped:
            logging.getLogger(__name__).warning("Skipped %s: %s", path, reason)
        if not files:
            raise ValueError(f"No readable images in {source!r} ({len(skipped)} files skipped).")
        vectors = []
        for start in range(0, len(files), self.batch_size):
            batch = files[start : start + self.batch_size]
            size = input_size(self.embedder)
            images = [image_array(read_image(p), p, size=size) for p in batch]
            if size is None:  # a model without a fixed size: one image at a time
                vectors += [self._embed_arrays(image[None]) for image in images]
            else:
                vectors.append(self._embed_arrays(np.stack(images)))
        return np.concatenate(vectors), files, None


def _read_index(path):
    """`(facts, embeddings)` of a saved index after checking that its files agree with each other."""
    try:
        with open(os.path.join(path, "index.json")) as f:
            facts = json.load(f)
        embeddings = np.load(os.path.join(path, "embeddings.npy"), allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # EOFError: a zero-byte .npy
        raise ValueError(
            f"{path!r} is not a readable FeatureIndex: {type(e).__name__}: {e}. Received: path={path!r}"
        ) from None
    keys = ("paths", "labels", "search", "batch_size", "dim")
    if not isinstance(facts, dict) or any(k not in facts for k in keys):
        raise ValueError(f"{path!r} is not a FeatureIndex: index.json lacks some of {', '.join(keys)}.")
    counts = {
        "embeddings": len(embeddings) if embeddings.ndim == 2 else -1,
        "paths": len(facts["paths"]),
        "labels": len(facts["labels"]),
    }
    if len(set(counts.values())) != 1 or embeddings.ndim != 2 or embeddings.shape[1] != facts["dim"]:
        raise ValueError(
            f"{path!r} is not a consistent FeatureIndex: "
            + ", ".join(f"{n} {k}" for k, n in counts.items())
            + f", embeddings of shape {embeddings.shape} for dim {facts['dim']}. Rebuild it."
        )
    return facts, embeddings


def embedding_model(model, *, weights="imagenet", image_size=None):
    """The Keras model from images to pooled features that `FeatureIndex` uses (see its `model` argument)."""
    import keras

    if isinstance(model, str):
        model = build_model(model, 1, input_shape=image_size, weights=weights)
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"model must be a Keras model or a backbone key such as 'resnet50'. Received: model={type(model).__name__}"
        )
    return feature_model(model, name=f"{model.name}_embedding")


def retrieval_metrics(embeddings, labels, ks=(1, 5, 10)):
    """Leave-one-out retrieval quality on labelled embeddings: each item queries all the others.

    Args:
        embeddings: `(n, dim)` L2-normalised vectors.
        labels: `(n,)` integer classes; an item is relevant to a query when their classes are equal.
        ks: the k of recall@k.

    Returns:
        `{"recall@k": fraction of queries with a relevant item among their k nearest, "mAP": mean average
        precision over the full ranking}`; queries whose class has no other member are left out.
    """
    embeddings, labels = np.asarray(embeddings, np.float32), np.asarray(labels)
    if len(embeddings) != len(labels):
        raise ValueError(f"Got {len(labels)} labels for {len(embeddings)} embeddings.")
    similarities = embeddings @ embeddings.T
    np.fill_diagonal(similarities, -np.inf)
    order = np.argsort(-similarities, axis=1, kind="stable")[:, :-1]  # self ranks last; dropped
    relevant = labels[order] == labels[:, None]
    has_relevant = relevant.any(axis=1)
    relevant = relevant[has_relevant]
    result = {f"recall@{k}": float(relevant[:, :k].any(axis=1).mean()) for k in ks}
    hits = np.cumsum(relevant, axis=1)
    precision_at_hits = np.where(relevant, hits / np.arange(1, relevant.shape[1] + 1), 0.0)
    result["mAP"] = float((precision_at_hits.sum(axis=1) / relevant.sum(axis=1)).mean())
    return result


def _normalise(vectors):
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
