"""cxr-edge runtime: screen chest X-rays with a TFLite model, without TensorFlow."""

__version__ = "0.1.0"
