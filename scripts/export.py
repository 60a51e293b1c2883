"""Export a `.keras` model (a run's model.keras or checkpoints/best.keras) as a SavedModel and/or TFLite.

Usage: python scripts/export.py MODEL.keras [--saved-model DIR] [--version N] [--labels labels.txt]
                                [--tflite FILE.tflite] [--quantize none|dynamic]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import keras_transfer  # noqa: E402, F401  (registers the preprocessing layer for loading)
from keras_transfer.export import export_saved_model, export_tflite  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a .keras file")
    parser.add_argument("--saved-model", help="base folder for a SavedModel version (TF Serving layout)")
    parser.add_argument("--version", type=int, help="version number (default: the next one)")
    parser.add_argument("--labels", help="text file with one class name per line")
    parser.add_argument("--tflite", help="write a TensorFlow Lite file here")
    parser.add_argument("--quantize", choices=["none", "dynamic"], default="none", help="TFLite quantization")
    args = parser.parse_args(argv)
    if not (args.saved_model or args.tflite):
        parser.error("nothing to do: give --saved-model DIR and/or --tflite FILE")
    if not (args.model.endswith(".keras") and os.path.isfile(args.model)):
        parser.error(f"argument model: {args.model!r} is not a .keras file")
    class_names = None
    if args.labels:
        with open(args.labels) as f:
            class_names = [line.strip() for line in f if line.strip()]
    model = keras.saving.load_model(args.model)
    try:
        if args.saved_model:
            print(f"SavedModel: {export_saved_model(model, args.saved_model, version=args.version, class_names=class_names)}")
        if args.tflite:
            size = export_tflite(model, args.tflite, quantize=None if args.quantize == "none" else args.quantize)
            print(f"TFLite: {args.tflite} ({size / 1e6:.1f} MB, quantize={args.quantize})")
    except (ValueError, OSError) as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
