"""report.html: built from a real run folder, opened in headless Chromium, its numbers checked against the files."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from keras_transfer.cli import main
from keras_transfer.report import calibration


def _chromium():
    return next(
        (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("circle", "square", "stripe")):
        (root / "images" / name).mkdir(parents=True)
        for i in range(12):
            image = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            image[8 + c * 6 : 14 + c * 6, 4:28] = 200 + c * 20  # a class cue that training can pick up a little
            Image.fromarray(image).save(root / "images" / name / f"{i}.png")
    (root / "images" / "square" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    run = root / "run"
    assert (
        main(
            [
                "--data",
                str(root / "images"),
                "--backbone",
                "small_cnn",
                "--image-size",
                "32",
                "--weights",
                "none",
                "--head-init",  # a random head, no augmentation, no early stop: a weak model, mistakes to show
                "none",
                "--augment",
                "false",
                "--early-stopping",
                "0",
                "--head-epochs",
                "2",
                "--fine-tune-epochs",
                "1",
                "--batch-size",
                "4",
                "--test-split",
                "0.5",
                "--output",
                str(run),
            ]
        )
        == 0
    )
    return run


@pytest.mark.slow
def test_the_run_folder_has_a_self_contained_report_that_the_report_command_rebuilds(run_dir, capsys):
    page = (run_dir / "report.html").read_text()
    for section in (
        "Settings",
        "Data",
        "Training",
        "Test metrics",
        "Confusion matrix",
        "Mistakes and doubts",
        "Calibration",
        "Timings",
        "Versions",
    ):
        assert f">{section}</h" in page, section
    assert "<script" not in page and "http://" not in page and "https://" not in page  # opens offline, no JavaScript
    assert "broken.png" in page  # the skipped file and its reason
    os.remove(run_dir / "report.html")
    assert main(["report", str(run_dir)]) == 0 and (run_dir / "report.html").exists()
    assert main(["report", str(run_dir / "nowhere")]) == 2
    assert "has no report.json" in capsys.readouterr().err
    os.remove(run_dir / "report.html")  # as a module too: `python -m keras_transfer.cli report RUN_DIR`
    done = subprocess.run(
        [sys.executable, "-m", "keras_transfer.cli", "report", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"Report: {run_dir / 'report.html'}" and (run_dir / "report.html").exists()


def test_expected_calibration_error_by_hand():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.3, 0.7]])
    ece, rows = calibration(probs, np.array([0, 1, 0, 1]))
    # bins: 0.9-1.0 holds two at 0.95 with one right (gap 0.45); 0.6 and 0.7 are right (gaps 0.4 and 0.3)
    assert ece == pytest.approx((2 * 0.45 + 0.4 + 0.3) / 4)
    assert [r[2] for r in rows] == [1, 1, 2]


@pytest.mark.slow
@pytest.mark.skipif(
    _chromium() is None,
    reason="no Chromium here: `make test` installs Debian's chromium where "
    "apt-get is allowed; the report is then checked in a real browser",
)
def test_the_report_in_headless_chromium(run_dir, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (in [dev]) drives the browser")
    report = json.loads((run_dir / "report.json").read_text())
    predictions = np.load(run_dir / "predictions.npz")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((run_dir / "report.html").as_uri())
        page.wait_for_load_state("load")
        widths = page.eval_on_selector_all("img", "images => images.map(i => i.complete ? i.naturalWidth : 0)")
        accuracy = page.inner_text("#accuracy")
        cells = page.eval_on_selector_all(
            "td[data-metric]", "cells => cells.map(c => [c.dataset.cls, c.dataset.metric, c.innerText])"
        )
        shown = page.eval_on_selector_all(
            "figure.example",
            "fs => fs.map(f => [f.dataset.kind, +f.dataset.index, +f.dataset.true, +f.dataset.predicted])",
        )
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert errors == []
    assert len(widths) >= 5 and all(w > 0 for w in widths)  # curves, confusion, calibration, thumbnails all load
    assert float(accuracy) == pytest.approx(report["accuracy"], abs=5e-5)
    assert len(cells) == 4 * len(report["class_names"])
    for name, metric, text in cells:
        assert float(text) == pytest.approx(report["per_class"][name][metric], abs=5e-5), (name, metric)
    predicted, labels = predictions["probabilities"].argmax(1), predictions["labels"]
    mistakes = [s for s in shown if s[0] == "mistake"]
    assert mistakes and len(mistakes) == min(8, int(np.sum(predicted != labels)))
    for kind, index, true, guess in shown:  # the page's mistakes are the model's mistakes, its labels the truth
        assert (true, guess) == (labels[index], predicted[index]) and (guess != true) == (kind == "mistake")
    pixels = np.asarray(Image.open(tmp_path / "page.png").convert("L"), np.float32)
    assert pixels.std() > 20  # not a blank page
