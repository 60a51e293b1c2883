"""The package version, in a leaf module: setup.cfg and the run report read it without loading TensorFlow."""

__version__ = "0.1.0"
