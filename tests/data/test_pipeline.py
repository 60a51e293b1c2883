"""The tf.data service: a dispatcher and two workers in this process decode the training split, each image once
per epoch; an address where nothing answers is refused by name, quickly."""

import time

import keras
import numpy as np
import pytest
from conftest import free_ports

import keras_transfer as kt
from keras_transfer.data import Shards, source_from, start_data_service, write_shards


def _indexed(n=24):
    """Image i is all pixels 10 * i: a batch says which images it holds."""
    return np.repeat(10.0 * np.arange(n, dtype=np.float32), 16 * 16 * 3).reshape(n, 16, 16, 3), np.arange(n) % 3


def _seen(dataset):
    """(image index, label) of every image of a pass, sorted."""
    return sorted(
        (int(round(float(image.mean()) / 10)), int(label))
        for x, y in dataset.as_numpy_iterator()
        for image, label in zip(x, y)
    )


def test_two_service_workers_decode_each_training_image_once_per_epoch(tmp_path):
    service = start_data_service(workers=2)
    write_shards(_indexed(), tmp_path / "shards", num_shards=4)
    options = dict(image_size=16, batch_size=4, validation_split=0.25)
    train, val, _, info = kt.load_dataset(
        Shards(tmp_path / "shards", service=service["address"]), **options, test_split=0.0
    )
    assert b"DataServiceDataset" in train._as_serialized_graph().numpy()  # through the service
    assert b"DataServiceDataset" not in val._as_serialized_graph().numpy()  # evaluation splits: decoded here
    local = _seen(kt.load_dataset(_indexed(), **options, test_split=0.0)[0])
    assert len(local) == info.sizes["train"] == 18 and all(label == i % 3 for i, label in local)
    for _ in range(2):  # each epoch: every training image once with its label, the same ones as without the service
        assert _seen(train) == local
    keras.utils.set_random_seed(0)
    model = kt.build_model("small_cnn", 3, input_shape=16, weights=None)
    history = kt.fine_tune(model, train, val, head_epochs=0, fine_tune_epochs=1, unfreeze="all", verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_an_address_where_nothing_answers_is_refused_by_name_within_seconds(tmp_path):
    shards = tmp_path / "shards"
    write_shards(_indexed(), shards, num_shards=1)
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"No tf.data service answers at grpc://127.0.0.1:9 within 3 s"):
        kt.load_dataset(Shards(shards, service="grpc://127.0.0.1:9"), image_size=16)
    assert time.monotonic() - start < 10
    with pytest.raises(ValueError, match=r"data_service must be 'grpc://host:port'. Received: data_service='nowhere'"):
        kt.load_dataset(Shards(shards, service="nowhere"), image_size=16)
    service = start_data_service()
    with pytest.raises(
        ValueError, match=r"Shards reads a folder of TFRecord shards .*: write the source once with write_shards"
    ):
        kt.load_dataset(source_from(_indexed(), data_service=service["address"]), image_size=16)


def test_the_service_command_refuses_a_port_that_cannot_be(capsys):
    assert kt.cli.main(["data-service", "--port", "99999"]) == 2
    assert "argument --port: invalid value '99999': a port is 1 to 65535" in capsys.readouterr().err


def test_a_service_that_stops_answering_is_named_within_the_timeout():
    import socket
    import threading

    from keras_transfer.data.pipeline import watch_service

    server = socket.create_server(("127.0.0.1", 0))  # stands in for a dispatcher: it accepts connections
    address = f"grpc://127.0.0.1:{server.getsockname()[1]}"
    lost, said = threading.Event(), []
    with watch_service(address, timeout_s=1.0, on_lost=lambda m: (said.append(m), lost.set()), every_s=0.1):
        assert not lost.wait(0.5)  # answering: nothing said
        server.close()  # killed
        start = time.monotonic()
        assert lost.wait(5.0)
    assert 0.9 < time.monotonic() - start < 3.0
    assert said == [said[0]] and said[0].startswith(f"the tf.data service at {address} has not answered for 1 s (")


@pytest.mark.slow
def test_the_command_starts_a_service_that_a_run_trains_through(tmp_path, capsys):
    import subprocess
    import sys

    from conftest import SUBPROCESS_ENV

    from keras_transfer.cli import main

    port = free_ports(1)[0]
    command = [sys.executable, "-m", "keras_transfer.cli", "data-service", "--port", str(port), "--workers", "2"]
    server = subprocess.Popen(command, env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert f"tf.data service at grpc://localhost:{port} with 2 workers" in line, server.stderr.read()[-2000:]
        write_shards("digits", tmp_path / "shards", num_shards=2)
        flags = [
            "--data",
            str(tmp_path / "shards"),
            "--backbone",
            "small_cnn",
            "--weights",
            "none",
            "--image-size",
            "16",
        ]
        flags += [
            "--head-epochs",
            "0",
            "--fine-tune-epochs",
            "1",
            "--unfreeze",
            "all",
            "--output",
            str(tmp_path / "run"),
        ]
        assert main([*flags, "--data-service", f"grpc://localhost:{port}"]) == 0
        assert "tune" in capsys.readouterr().out
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_cached_training_split_gives_the_same_batches_for_one_seed_in_every_run(tmp_path):
    from conftest import write_colour_images

    folder = write_colour_images(tmp_path / "images", n=40)  # parallel decodes finish in any order

    def two_epochs(seed):
        train = kt.load_dataset(folder, image_size=16, batch_size=8, validation_split=0.0, test_split=0.0, seed=seed)[0]
        return [
            np.concatenate([x.numpy().reshape(len(x), -1).sum(axis=1), y.numpy()]) for _ in range(2) for x, y in train
        ]

    first = two_epochs(3)
    assert all(np.array_equal(a, b) for a, b in zip(first, two_epochs(3)))
    assert not np.array_equal(np.concatenate(first[:15]), np.concatenate(first[15:]))  # reshuffled each epoch
    assert not all(np.array_equal(a, b) for a, b in zip(first, two_epochs(4)))
