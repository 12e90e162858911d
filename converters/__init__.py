"""converters: trained Keras model -> TFLite files with cxr-edge metadata inside."""

import os

# tensorflow-model-optimization 0.8.1 needs Keras 2: tf-keras must be selected before TF is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
