"""Weight averaging over training (`cxr-train fit --average-from EPOCH`): the model that ships is the running
mean of the weights, taken every `every` steps from epoch EPOCH to the end, instead of the single
epoch that scored best on the internal validation split.

Why: that validation split comes from the training sources, so picking the epoch on it picks the best
*same-hospital* epoch, and with the source-look augmentation its AUC swings from epoch to epoch (the shipped
recipe, run again with another seed, stopped after 4 epochs on a peak at epoch 1). An average of the weights
along the trajectory (stochastic weight averaging, Izmailov et al. 2018; dense averaging for domain
generalisation, SWAD, Cha et al. 2021) lands in a flatter region and depends less on one epoch's luck; the
epoch budget is fixed and no early stopping is used. BatchNorm statistics are re-estimated afterwards
(train/batchnorm.py), as every fit does, because averaged weights need their own statistics.

The running mean is saved beside the checkpoints at every epoch end, so `--resume` continues it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

AVERAGE_FILE = "average.npz"


class WeightAverage:
    """Running mean of all of a model's weights (the list stays the same when layers are unfrozen); `add` folds
    in the current ones. BatchNorm statistics in it are re-estimated afterwards."""

    def __init__(self, model, path: Path):
        self.model, self.path, self.count, self.mean = model, Path(path), 0, None

    def add(self) -> None:
        current = [v.numpy() for v in self.model.weights]
        if self.mean is None:
            self.mean = [np.array(w, np.float64) for w in current]
        else:
            for mean, w in zip(self.mean, current):
                mean += (w - mean) / (self.count + 1)
        self.count += 1

    def save(self) -> None:
        if self.mean is not None:
            np.savez(self.path, *self.mean, count=self.count)

    def load(self) -> bool:
        if not self.path.exists():
            return False
        with np.load(self.path) as data:
            self.count = int(data["count"])
            self.mean = [data[f"arr_{i}"] for i in range(len(data.files) - 1)]
        return True

    def apply(self) -> int:
        """Put the mean into the model; returns how many snapshots it holds (0: nothing applied)."""
        if not self.count:
            return 0
        for variable, mean in zip(self.model.weights, self.mean):
            variable.assign(mean.astype(variable.dtype.as_numpy_dtype))
        return self.count


def averaging_callback(average: WeightAverage, *, start_epoch: int, every: int):
    """Keras callback: fold the weights into `average` every `every` training steps of epochs >= start_epoch
    (1-based), and save the mean at each epoch end."""
    import tf_keras as keras

    class Averaging(keras.callbacks.Callback):
        epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch + 1

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch >= start_epoch and (batch + 1) % every == 0:
                average.add()

        def on_epoch_end(self, epoch, logs=None):
            if self.epoch >= start_epoch:
                average.save()
                state = average.path.with_suffix(".json")
                state.write_text(json.dumps({"snapshots": average.count, "through_epoch": self.epoch}))

    return Averaging()
