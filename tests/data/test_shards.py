"""TFRecord shards: `write_shards` writes any source, `load_dataset` reads them as it reads the source, each worker
of several reads only its own shards, and a damaged, foreign or newer set is refused by name."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import SUBPROCESS_ENV, free_ports

import keras_transfer as kt
from keras_transfer.data import source_from, write_shards

WORKER_SCRIPT = """
import json, sys
import numpy as np, tensorflow as tf
import keras, keras_transfer as kt

strategy = kt.get_strategy("multi_worker")
train, _, _, info = kt.load_dataset(sys.argv[1], image_size=32, batch_size=8, validation_split=0.0, test_split=0.0,
                                 cache=False)
keras.utils.set_random_seed(0)
with strategy.scope():
    model = kt.build_model("small_cnn", 2, input_shape=32, weights=None)
kt.fine_tune(model, train, head_epochs=0, fine_tune_epochs=1, unfreeze="all", strategy=strategy, verbose=0)
seen = []  # what this worker's input gives, distributed as fit distributes it: image i is all pixels 8 * i
for x, _ in strategy.experimental_distribute_dataset(train):
    for local in strategy.experimental_local_results(x):
        seen += [int(round(float(v) / 8)) for v in tf.reduce_mean(local, axis=[1, 2, 3]).numpy()]
with open(sys.argv[2], "w") as f:
    json.dump({"seen": seen, "weights": [w.tolist() for w in model.get_weights()]}, f)
"""


def _indexed_images(n=16):
    """Image i is all pixels 8 * i (so a batch says which images it holds); labels alternate."""
    x = np.repeat(8.0 * np.arange(n, dtype=np.float32), 32 * 32 * 3).reshape(n, 32, 32, 3)
    return x, np.arange(n) % 2


def _shard_indices(folder):
    """shard file -> the image indices in it, read back from the records."""
    manifest = json.loads((folder / "manifest.json").read_text())
    spec = {"index": tf.io.FixedLenFeature([], tf.int64)}
    return {
        s["file"]: {
            int(tf.io.parse_single_example(r, spec)["index"]) for r in tf.data.TFRecordDataset(str(folder / s["file"]))
        }
        for s in manifest["shards"]["train"]
    }


@pytest.mark.slow
def test_two_workers_read_disjoint_shards_covering_all_and_end_identical(tmp_path):
    shards = tmp_path / "shards"
    write_shards(_indexed_images(), shards, num_shards=4)
    inside = _shard_indices(shards)
    assert sorted(i for part in inside.values() for i in part) == list(range(16))
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), str(shards), str(tmp_path / f"w{i}.json")],
            env={
                **SUBPROCESS_ENV,
                "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
            },
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-3000:]
    results = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(2)]
    read = [{f for f, part in inside.items() if part & set(r["seen"])} for r in results]
    for r, files in zip(results, read):
        assert sorted(r["seen"]) == sorted(i for f in files for i in inside[f])  # whole shards, nothing else
    assert not read[0] & read[1] and read[0] | read[1] == set(inside), read
    assert all(np.array_equal(np.array(a), np.array(b)) for a, b in zip(*(r["weights"] for r in results)))


def _pairs(dataset):
    """(label, image sum) of every image, sorted: the same images and labels, in any order."""
    return sorted(
        (tuple(np.atleast_1d(label).tolist()), float(image.sum()))
        for x, y in dataset.as_numpy_iterator()
        for image, label in zip(x, y)
    )


def test_a_folder_in_shards_loads_as_the_folder(colour_folder, tmp_path):
    out = tmp_path / "shards"
    manifest = write_shards(colour_folder, out, num_shards=2)
    assert manifest["skipped"] == [] and manifest["counts"]["train"] == {"blue": 12, "green": 12, "red": 12}
    assert [s["file"] for s in manifest["shards"]["train"]] == [
        "train/shard-00000-of-00002.tfrecord",
        "train/shard-00001-of-00002.tfrecord",
    ]
    assert sum(s["records"] for s in manifest["shards"]["train"]) == 36
    assert str(colour_folder) not in (out / "manifest.json").read_text()  # the folder can move
    options = dict(image_size=24, batch_size=5, test_split=0.25, deterministic=True)
    original, sharded = kt.load_dataset(colour_folder, **options), kt.load_dataset(out, **options)
    for key in ("class_names", "label_map", "counts", "sizes", "multi_label"):
        assert getattr(sharded[3], key) == getattr(original[3], key), key
    for a, b in zip(original[:3], sharded[:3]):
        assert _pairs(a) == _pairs(b)
    assert write_shards(colour_folder, out, num_shards=2) == manifest  # written: the same call again keeps it


def test_several_labels_per_image_and_a_resize_on_writing(rgb_images, tmp_path):
    x, y = rgb_images(12, 40), np.eye(3, dtype=np.uint8)[np.arange(12) % 3]
    y[::4, 2] = 1
    manifest = write_shards((x, y), tmp_path / "s", image_size=16)
    assert manifest["multi_label"] and tuple(manifest["image_size"]) == (16, 16)
    train, _, _, info = kt.load_dataset(
        tmp_path / "s", image_size=16, validation_split=0.0, batch_size=4, test_split=0.0
    )
    assert info.multi_label and sorted(map(tuple, np.concatenate([b for _, b in train]).tolist())) == sorted(
        map(tuple, y.astype(np.float32).tolist())
    )


def test_a_damaged_image_is_left_out_and_listed_in_the_manifest(colour_folder, tmp_path):
    import shutil

    folder = tmp_path / "images"
    shutil.copytree(colour_folder, folder)
    whole = (folder / "red" / "0.png").read_bytes()
    (folder / "red" / "0.png").write_bytes(whole[:-60])
    manifest = write_shards(folder, tmp_path / "shards")
    assert manifest["skipped"] == [["red/0.png", "truncated PNG (no IEND chunk)"]]  # no absolute path
    train, _, _, info = kt.load_dataset(tmp_path / "shards", image_size=16, validation_split=0.0, test_split=0.0)
    assert sum(len(y) for _, y in train) == info.sizes["train"] == 35


def test_a_killed_write_resumes_keeping_the_finished_shards(colour_folder, tmp_path):
    out = tmp_path / "shards"
    manifest = write_shards(colour_folder, out, num_shards=3)
    kept, lost = out / manifest["shards"]["train"][0]["file"], out / manifest["shards"]["train"][1]["file"]
    before = kept.stat().st_mtime_ns
    (out / "manifest.json").unlink()  # killed before the manifest, and before the second shard was renamed
    lost.rename(str(lost) + ".tmp-99")
    (out / (manifest["shards"]["train"][1]["file"] + ".json")).unlink()
    assert write_shards(colour_folder, out, num_shards=3) == manifest
    assert kept.stat().st_mtime_ns == before and lost.exists() and not list(out.glob("train/*.tmp-*"))
    kt.load_dataset(out, image_size=16, validation_split=0.0)


def test_bad_folders_and_shards_are_refused_by_name(colour_folder, tmp_path, monkeypatch):
    out = tmp_path / "shards"
    write_shards(colour_folder, out, num_shards=2)
    with pytest.raises(ValueError, match="already holds another set of shards"):
        write_shards(colour_folder, out, num_shards=3)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds 'notes.txt': shards are written into an empty folder"):
        write_shards(colour_folder, tmp_path / "busy")
    with pytest.raises(ValueError, match=r"Unknown source options \['labels'\]"):
        write_shards(source_from(colour_folder, labels="y"), tmp_path / "x")
    with pytest.raises(ValueError, match="num_shards must be an integer >= 1"):
        write_shards(colour_folder, tmp_path / "x", num_shards=0)
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2", "c:3"]}, "task": {"type": "worker", "index": 0}})
    )
    with pytest.raises(ValueError, match="has 2 shards for a split, fewer than the 3 workers"):
        kt.load_dataset(out, image_size=16, validation_split=0.0)
    monkeypatch.delenv("TF_CONFIG")
    shard = out / "train" / "shard-00001-of-00002.tfrecord"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"shard-00001-of-00002.tfrecord' is damaged: corrupted record at \d+\."):
        kt.data.check_shards(out)
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(ValueError, match=r"shard-00001-of-00002.tfrecord' does not match manifest.json: \d+ bytes"):
        kt.load_dataset(out)
    (out / "train" / "shard-00000-of-00005.tfrecord").write_bytes(b"")
    with pytest.raises(ValueError, match="mixes shards of another set with its own: train/shard-00000-of-00005"):
        kt.load_dataset(out)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(ValueError, match="written by a newer keras_transfer"):
        kt.load_dataset(out)
    (out / "manifest.json").unlink()
    with pytest.raises(ValueError, match="holds TFRecord shards but no manifest.json: a write_shards call that did"):
        kt.load_dataset(out)


def test_one_writer_of_a_shards_folder_at_a_time_and_never_success_for_a_set_changed_under_it(
    colour_folder, tmp_path, monkeypatch
):
    from keras_transfer.data import shard_writer

    out = tmp_path / "shards"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom keras_transfer.files import exclusive\n"
            f"with exclusive({str(out)!r}, {str(out / shard_writer.LOCK)!r}, 'shards folder'):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        env=SUBPROCESS_ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RuntimeError, match=rf"The shards folder '.*shards' is in use by process {holder.pid}"):
            write_shards(colour_folder, out, num_shards=2)
    finally:
        holder.kill()
        holder.wait()
    write_split = shard_writer._write_split

    def another_writer_meanwhile(records, split, plan, output_dir):
        facts = write_split(records, split, plan, output_dir)
        sidecar = tmp_path / "shards" / (facts[0]["file"] + ".json")
        sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "key": "another writer's"}))
        return facts

    monkeypatch.setattr(shard_writer, "_write_split", another_writer_meanwhile)
    with pytest.raises(RuntimeError, match=r"Shard train/shard-00000-of-00002.tfrecord .* was changed by another"):
        write_shards(colour_folder, out, num_shards=2)
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(shard_writer, "_write_split", write_split)
    assert write_shards(colour_folder, out, num_shards=2)["shards"]  # the lock a killed writer left is no obstacle
    assert not (out / shard_writer.LOCK).exists()


def test_a_run_stopped_by_a_damaged_shard_names_it(colour_folder, tmp_path, capsys):
    out = tmp_path / "shards"
    write_shards(colour_folder, out, num_shards=2)
    shard = out / "train" / "shard-00001-of-00002.tfrecord"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the same size: only reading finds it
    shard.write_bytes(bytes(data))
    argv = ["--data", str(out), "--backbone", "small_cnn", "--weights", "none", "--image-size", "32"]
    argv += ["--head-epochs", "1", "--fine-tune-epochs", "0", "--output", str(tmp_path / "run")]
    assert kt.cli.main(argv) == 2
    assert re.search(r"shard-00001-of-00002.tfrecord' is damaged: corrupted record at \d+", capsys.readouterr().err)


def test_the_command_writes_shards_and_a_run_trains_from_them(colour_folder, tmp_path, capsys):
    from keras_transfer.cli import main

    out = tmp_path / "shards"
    assert main(["write-shards", str(colour_folder), str(out), "--num-shards", "2"]) == 0
    assert "train: 36 images in 2 shards" in capsys.readouterr().out
    assert main(["write-shards", str(colour_folder), str(out), "--num-shards", "3"]) == 2
    assert "already holds another set of shards" in capsys.readouterr().err
    flags = ["--data", str(out), "--backbone", "small_cnn", "--weights", "none", "--image-size", "32"]
    assert main([*flags, "--head-epochs", "1", "--fine-tune-epochs", "0", "--output", str(tmp_path / "run")]) == 0
    assert "3 classes, train 27, validation 6, test 3" in capsys.readouterr().out
