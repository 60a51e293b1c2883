"""Export a `.keras` model (a run's model.keras or checkpoints/best.keras) as a SavedModel, TFLite and/or ONNX.

Usage: keras-transfer export MODEL.keras [--saved-model DIR] [--version N] [--labels labels.txt]
                                [--tflite FILE.tflite] [--quantize none|dynamic|float16|int8]
                                [--representative DATA] (int8: training images to calibrate on) [--onnx FILE.onnx]
                                [--thresholds T [T ...]]   (a multi-label model's, e.g. from its report.json)
"""

from __future__ import annotations

import argparse
import os

from keras_transfer.cli import add_model_loading, add_verbose, model_loading, positive_int
from keras_transfer.export import TFLITE_QUANTIZE, export_onnx, export_saved_model, export_tflite
from keras_transfer.models import input_size, load_model
from keras_transfer.runs import run_labels, run_model


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a .keras file, or a run folder (its model.keras, class names and thresholds)")
    parser.add_argument("--saved-model", help="base folder for a SavedModel version (TF Serving layout)")
    parser.add_argument("--version", type=positive_int, help="version number (default: the next one)")
    parser.add_argument(
        "--labels", help="text file with one class name per line (default: the run's, for a model in a run folder)"
    )
    parser.add_argument("--tflite", help="write a TensorFlow Lite file here")
    parser.add_argument(
        "--quantize",
        choices=["none", *(q for q in TFLITE_QUANTIZE if q)],
        default="none",
        help="TFLite quantization: " + "; ".join(f"{q or 'none'}: {what}" for q, what in TFLITE_QUANTIZE.items()),
    )
    parser.add_argument(
        "--representative",
        help="with --quantize int8: training images to calibrate on (a folder of class subfolders, a CSV, ... as "
        "keras-transfer --data takes them); the first few hundred are used",
    )
    parser.add_argument(
        "--input-type", choices=["float32", "uint8"], default="float32", help="int8: uint8 in and out (integer-only)"
    )
    parser.add_argument("--onnx", help="write an ONNX file here (float32 RGB 0-255 input, preprocessing inside)")
    parser.add_argument(
        "--thresholds",
        nargs="+",
        type=float,
        help="a multi-label model's per-label thresholds (one, or one per label; default 0.5), for every export",
    )
    return add_verbose(add_model_loading(parser))


def run(args):
    if not (args.saved_model or args.tflite or args.onnx):
        raise ValueError("nothing to do: give --saved-model DIR, --tflite FILE and/or --onnx FILE")
    path, run_dir = run_model(args.model)
    if not (path.endswith(".keras") and os.path.isfile(path)):
        raise ValueError(f"argument model: {args.model!r} is not a .keras file or a run folder")
    class_names, thresholds = run_labels(run_dir) if run_dir else (None, None)  # what the run recorded
    if args.labels:
        with open(args.labels) as f:
            class_names = [line.strip() for line in f if line.strip()]
    model = load_model(path, **model_loading(args))
    labels = {"class_names": class_names, "thresholds": args.thresholds or thresholds}
    if args.saved_model:
        print(f"SavedModel: {export_saved_model(model, args.saved_model, version=args.version, **labels)}")
    if args.tflite:
        quantize = None if args.quantize == "none" else args.quantize
        size = export_tflite(
            model,
            args.tflite,
            quantize=quantize,
            representative_data=_representative(args.representative, model),
            input_type=args.input_type,
            **labels,
        )
        print(f"TFLite: {args.tflite} ({size / 1e6:.1f} MB, quantize={args.quantize})")
    if args.onnx:
        print(f"ONNX: {export_onnx(model, args.onnx, **labels)}")
    return 0


def _representative(source, model):
    """The training split of `source` at the model's input size, or None."""
    if source is None:
        return None
    from keras_transfer.data import load_dataset

    return load_dataset(source, image_size=input_size(model), batch_size=32, validation_split=0.0)[0]
