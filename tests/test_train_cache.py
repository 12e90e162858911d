"""The preprocessed-tensor cache of train.data: a cache file holds images only and is read back only for the
same files and preprocessing; labels are attached afresh, never read from the cache."""

import numpy as np

from edge.preprocess import PreprocessSpec
from images import SAMPLES
from train.data import eval_dataset


def _labels(ds) -> list[int]:
    return [int(v) for _, labels in ds for v in labels.numpy()]


def test_a_cache_written_with_other_labels_is_not_read_back(tmp_path):
    paths = [str(SAMPLES / "normal-child.png"), str(SAMPLES / "pneumonia-child.png")]
    spec = PreprocessSpec(height=32, width=32)
    cache = tmp_path / "cache" / "val"
    assert _labels(eval_dataset(paths, [0, 1], spec, cache=cache)) == [0, 1]  # writes the cache
    # the same files mapped to other classes (another --alias or --classes in a reused --out)
    assert _labels(eval_dataset(paths, [2, 0], spec, cache=cache)) == [2, 0]
    first = np.concatenate([x.numpy() for x, _ in eval_dataset(paths, [0, 1], spec, cache=cache)])
    assert first.shape == (2, 32, 32, 1)
    assert len(list(cache.parent.glob("val-*.index"))) == 1  # the images are cached once, for every labelling
