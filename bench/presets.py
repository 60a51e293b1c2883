"""A ViT-style keras-hub preset vs a CNN of similar size on this machine: frozen features and fine-tuning speed.

The preset is made here with random weights (a ViT-Ti/16 by default: 12 blocks of width 192, 5.7M parameters; the
speed does not depend on the weights), saved as a local preset folder and built with `build_model("keras_hub:DIR")`
like a downloaded one; the CNN is `efficientnet_lite0` (4.7M parameters with its top). For each, in alternating
repeats: images/s of the frozen backbone's pooled features (what the cached frozen stage computes once) and of a
fine-tuning train step with every layer trainable (the second stage), at the same size and batch. Then one
`fine_tune` per backbone (2 head epochs on cached features, 1 fine-tuning epoch) on the same random images, to show
the cached frozen stage runs for token-sequence backbones too.

Usage: python bench/presets.py [--image-size 224] [--batch-size 16] [--images 64] [--repeats 3]
                               [--width 192] [--depth 12] [--heads 3] [--cnn efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

from keras_transfer.terminal import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads, so its start-up lines stay off the terminal
warnings.filterwarnings("ignore", category=UserWarning, module=r"keras(\.|$)")  # as the command does

import keras
import numpy as np
import tensorflow as tf

import keras_transfer as kt
from keras_transfer.models import feature_extractor


def make_vit_preset(folder, args):
    import keras_hub

    network = keras_hub.models.ViTBackbone(
        image_shape=(args.image_size, args.image_size, 3),
        patch_size=16,
        num_layers=args.depth,
        num_heads=args.heads,
        hidden_dim=args.width,
        mlp_dim=4 * args.width,
    )
    network.save_to_preset(folder)
    keras_hub.layers.ImageConverter(image_size=(args.image_size,) * 2, scale=1 / 127.5, offset=-1.0).save_to_preset(
        folder
    )
    return network.count_params()


def rates(model, images, labels, batch_size):
    """(frozen features images/s, fine-tuning step images/s), each after one warm-up pass."""
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size).cache()
    features = feature_extractor(model)
    for x, _ in data.take(1):
        features(x)
    start = time.perf_counter()
    for x, _ in data:
        features(x).numpy()
    frozen = len(images) / (time.perf_counter() - start)
    kt.set_trainable(model, "all")
    model.compile(keras.optimizers.Adam(1e-5), "sparse_categorical_crossentropy")
    model.fit(data.take(1), epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(data, epochs=1, verbose=0)
    return frozen, len(images) / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--cnn", default="efficientnet_lite0")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (args.images, args.image_size, args.image_size, 3)).astype("float32")
    labels = rng.integers(0, 4, args.images)
    with tempfile.TemporaryDirectory() as folder:
        make_vit_preset(folder, args)
        names = {f"keras_hub:{folder}": f"ViT {args.depth}x{args.width} (keras-hub)", args.cnn: args.cnn}
        results = {key: [] for key in names}
        for _ in range(args.repeats):
            for key in names:  # alternating, so both see the same machine state
                keras.utils.set_random_seed(0)
                model = kt.build_model(key, 4, input_shape=args.image_size, weights=None)
                results[key].append((model.count_params(),) + rates(model, images, labels, args.batch_size))
        report(names, results, args)
        for key, name in names.items():
            keras.utils.set_random_seed(0)
            model = kt.build_model(key, 4, input_shape=args.image_size, weights=None)
            data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(args.batch_size)
            start = time.perf_counter()
            kt.fine_tune(model, data, head_epochs=2, fine_tune_epochs=1, cache_features=True, verbose=0)
            print(
                f"fine_tune (2 head epochs on cached features + 1 epoch all layers), {name}: "
                f"{time.perf_counter() - start:.1f} s"
            )


def report(names, results, args):
    print(
        f"\n{args.images} random images at {args.image_size} px, batch {args.batch_size}, {os.cpu_count()} cores, "
        f"{args.repeats} alternating repeats (median):"
    )
    print(f"  {'backbone':34} {'parameters':>11} {'frozen img/s':>13} {'fine-tune img/s':>16}")
    medians = {}
    for key, name in names.items():
        params, frozen, tune = np.median(np.array(results[key]), axis=0)
        medians[key] = (frozen, tune)
        print(f"  {name:34} {int(params):>11,} {frozen:13.1f} {tune:16.1f}")
    (vit, cnn) = medians.values()
    print(f"  ratio ViT / CNN: frozen {vit[0] / cnn[0]:.2f}x, fine-tuning {vit[1] / cnn[1]:.2f}x")


if __name__ == "__main__":
    main()
