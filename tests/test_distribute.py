import json
import os
import re
import signal
import subprocess
import sys
import time

import keras
import pytest
import tensorflow as tf
from conftest import SUBPROCESS_ENV, free_ports

from keras_transfer import get_strategy
from keras_transfer.distribute import set_mixed_precision
from keras_transfer.runs import read_history


def test_auto_on_this_machine_is_the_default_strategy(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert get_strategy("auto") is tf.distribute.get_strategy()
    assert get_strategy("one_device").num_replicas_in_sync == 1


def test_auto_picks_multi_worker_from_tf_config(monkeypatch):
    from keras_transfer import distribute

    monkeypatch.setenv(
        "TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}'
    )
    assert distribute._auto() == "multi_worker"
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match=r"TF_CONFIG is not valid JSON"):
        distribute._auto()


def test_errors():
    with pytest.raises(ValueError, match=r"Unknown strategy 'gpu'\. Expected one of: auto, default, one_device"):
        get_strategy("gpu")
    with pytest.raises(ValueError, match=r"Unknown mixed precision mode 'fp16'"):
        set_mixed_precision("fp16")


def test_mixed_precision_auto_is_bfloat16_on_cpu():
    assert set_mixed_precision("auto") == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert set_mixed_precision("off") == "float32"


@pytest.mark.parametrize(
    "tf_config, message",
    [
        (
            {"cluster": {"worker": ["h:1", "h:1"]}, "task": {"type": "worker", "index": 0}},
            r"lists 'h:1' more than once",
        ),
        ({"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 2}}, r"is not in its cluster"),
        ({"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "ps", "index": 0}}, r"is not in its cluster"),
        ({"cluster": {"worker": "h:1"}}, r"must be a JSON object like"),
    ],
)
def test_a_tf_config_that_cannot_form_its_cluster_is_refused_before_anything_starts(monkeypatch, tf_config, message):
    from keras_transfer import distribute

    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    with pytest.raises(ValueError, match=message):
        distribute.worker_rank()
    with pytest.raises(ValueError, match=message):
        get_strategy("multi_worker")


def test_tasks_are_named_in_rank_order(monkeypatch):
    from keras_transfer import distribute

    cluster = {"chief": ["c:1"], "worker": ["w:1", "w:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert distribute.cluster_addresses() == [("chief", "c:1"), ("worker 0", "w:1"), ("worker 1", "w:2")]
    assert distribute.worker_rank() == (3, 2)


# --- the command on two workers of 127.0.0.1 -------------------------------------------------------------------


def _start_workers(tmp_path, args, outputs, indices=(0, 1), ports=None):
    """`keras-transfer ARGS --output OUTPUT` as worker i of a two-worker TF_CONFIG on 127.0.0.1, for each index;
    their temporary folders under `tmp_path/tmp`. Returns (processes, ports)."""
    ports = ports or free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    processes = []
    for i in indices:
        env = {
            **SUBPROCESS_ENV,
            "TMPDIR": str(tmp_path / "tmp"),
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
        }
        command = [sys.executable, "-m", "keras_transfer.cli", *args, "--output", str(outputs[i])]
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return processes, ports


def _finish(processes, timeout=300):
    return [(p.wait(timeout), *p.communicate()) for p in processes]


def _weights_digest(text):
    return re.search(r"Trained weights: sha256 (\w+)", text).group(1)


SMALL_RUN = ["--backbone", "small_cnn", "--weights", "none", "--image-size", "32", "--batch-size", "2"]
SMALL_RUN += ["--augment", "false", "--strategy", "multi_worker", "--test-split", "0.2"]


@pytest.mark.slow
def test_the_command_on_two_workers_writes_one_run_from_the_chief(tmp_path, colour_folder):
    outputs = [tmp_path / "run0", tmp_path / "run1"]  # a folder per worker (no shared disk): worker 1 writes none
    args = ["--data", str(colour_folder), *SMALL_RUN, "--head-epochs", "1", "--fine-tune-epochs", "1"]
    processes, _ = _start_workers(tmp_path, [*args, "--export", str(tmp_path / "export")], outputs)
    (rc0, out0, err0), (rc1, out1, err1) = _finish(processes)
    assert rc0 == 0 and rc1 == 0, err0[-2000:] + err1[-2000:]
    assert (outputs[0] / "complete.json").exists() and not outputs[1].exists()
    assert sorted(os.listdir(tmp_path / "export")) == ["1"]
    assert sorted(read_history(outputs[0])) == [0, 1]
    assert _weights_digest(out0) == _weights_digest(out1)  # trained in step
    worker1_epochs = [line for line in out1.splitlines() if "epoch " in line and "/2" in line]
    assert len(worker1_epochs) == 2 and all(line.startswith("[worker 1] epoch") for line in worker1_epochs)
    assert "test:" in out0 and "test:" not in out1  # the chief alone evaluates
    assert os.listdir(tmp_path / "tmp") == []  # temporary folders removed by both
    # The run's identity holds its cluster size: the same command on one worker is another run.
    one = subprocess.run(
        [sys.executable, "-m", "keras_transfer.cli", *args, "--output", str(outputs[0])],
        env={k: v for k, v in SUBPROCESS_ENV.items() if k != "TF_CONFIG"},
        capture_output=True,
        text=True,
    )
    assert one.returncode == 2 and "holds another run: workers 2 → (unset)" in one.stderr, one.stderr[-2000:]


@pytest.mark.slow
def test_worker_1_killed_mid_stage_2_and_both_started_again_resume_from_the_chief(tmp_path, colour_folder):
    from keras_transfer.data import write_shards

    write_shards(colour_folder, tmp_path / "shards", num_shards=2)
    output, export = tmp_path / "run", tmp_path / "export"  # one --output for both, as on a shared disk
    args = ["--data", str(tmp_path / "shards"), *SMALL_RUN, "--head-epochs", "1", "--fine-tune-epochs", "3"]
    args += ["--export", str(export)]
    processes, ports = _start_workers(tmp_path, args, [output, output])
    state = output / "backup" / "state.json"
    deadline = time.time() + 240
    while not (state.exists() and '"stage": "tune"' in state.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    processes[1].send_signal(signal.SIGKILL)  # one stage-2 epoch committed
    (rc0, _, err0), (rc1, _, _) = _finish(processes)
    assert rc1 == -signal.SIGKILL and rc0 == 1, err0[-3000:]
    assert f"worker 1 (127.0.0.1:{ports[1]}) stopped" in err0, err0[-1000:]
    assert "the same command resumes after epoch" in err0
    committed = len(json.loads(state.read_text())["history"])
    assert 2 <= committed < 4

    processes, _ = _start_workers(tmp_path, args, [output, output])
    (rc0, out0, err0), (rc1, out1, err1) = _finish(processes)
    assert rc0 == 0 and rc1 == 0, err0[-2000:] + err1[-2000:]
    assert f"Resuming after epoch {committed}" in out0 and f"[worker 1] Resuming after epoch {committed}" in out1
    assert sorted(read_history(output)) == [0, 1, 2, 3]  # every epoch once
    assert sorted(os.listdir(export)) == ["1"]
    assert _weights_digest(out0) == _weights_digest(out1)
    assert os.listdir(tmp_path / "tmp") == [] and not [p for p in output.rglob("*") if ".tmp-" in p.name]


@pytest.mark.slow
def test_a_worker_that_never_comes_is_named_within_the_peer_timeout(tmp_path, colour_folder):
    args = ["--data", str(colour_folder), *SMALL_RUN, "--peer-timeout", "5"]
    start = time.time()
    processes, ports = _start_workers(tmp_path, args, [tmp_path / "run"], indices=(0,))
    ((rc, out, err),) = _finish(processes, timeout=120)
    assert rc == -signal.SIGKILL and time.time() - start < 60
    assert f"worker 0 (127.0.0.1:{ports[0]}) waited 5 s for the 2 workers of TF_CONFIG" in err
    assert f"worker 1 at 127.0.0.1:{ports[1]} did not answer" in err and "--peer-timeout" in err
    assert not (tmp_path / "run" / "run.json").exists()
