"""Export for serving and devices, one module per format: `saved_model` (TF Serving's layout, written
atomically), `tflite` (float32 / float16 / dynamic range / int8, run by LiteRT), `onnx`; `predictors` (one
predictor for every format, through the one image decoder), `benchmark` (each format's size, accuracy and speed
side by side); `layout` names the export's files."""

from keras_transfer.export.benchmark import EXPORT_FORMATS, benchmark_exports, format_exports
from keras_transfer.export.layout import FILES
from keras_transfer.export.onnx import export_onnx, onnx_predictor
from keras_transfer.export.predictors import export_facts, export_thresholds, keras_predictor, load_predictor
from keras_transfer.export.saved_model import export_saved_model
from keras_transfer.export.tflite import (
    TFLITE_METADATA,
    TFLITE_QUANTIZE,
    dataset_images,
    export_tflite,
    tflite_interpreter,
    tflite_metadata,
    tflite_predictor,
)

__all__ = [
    "EXPORT_FORMATS",
    "FILES",
    "TFLITE_METADATA",
    "TFLITE_QUANTIZE",
    "benchmark_exports",
    "dataset_images",
    "export_facts",
    "export_onnx",
    "export_saved_model",
    "export_tflite",
    "export_thresholds",
    "format_exports",
    "keras_predictor",
    "load_predictor",
    "onnx_predictor",
    "tflite_interpreter",
    "tflite_metadata",
    "tflite_predictor",
]
