"""Keras metric for the screening decision, so early stopping can watch what the device decides on."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402


@keras.saving.register_keras_serializable(package="cxr_edge")
class ScreeningAUC(keras.metrics.AUC):
    """ROC AUC of abnormality = 1 - P(normal) against "true class is not normal" (unweighted)."""

    def __init__(self, normal_index: int = 0, name: str = "screening_auc", **kwargs):
        kwargs.setdefault("num_thresholds", 500)
        super().__init__(name=name, **kwargs)
        self.normal_index = normal_index

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = tf.cast(tf.not_equal(tf.cast(tf.reshape(y_true, [-1]), tf.int32), self.normal_index), tf.float32)
        score = 1.0 - tf.cast(y_pred[:, self.normal_index], tf.float32)
        return super().update_state(labels, score)

    def get_config(self):
        return {**super().get_config(), "normal_index": self.normal_index}
