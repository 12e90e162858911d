"""AdaBN check: re-estimate BatchNorm statistics on unlabeled images of an unseen source (half its patients),
score the other half. usage: python adabn.py RUN SOURCE [n_adapt]"""
import csv, json, os, sys, hashlib
from pathlib import Path
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1"); os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import numpy as np

DATA = Path(os.environ.get("CXR_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
import tf_keras as keras
import models.architectures  # noqa
from edge.metadata import ModelMetadata
from edge.metrics import roc_auc
from edge.datasets import discover_many
from train.batchnorm import recalibrate
from train.data import eval_dataset
from edge import lungs as edge_lungs

run, source = Path(sys.argv[1]), sys.argv[2]
meta = ModelMetadata.from_dict(json.loads((run / "model.meta.json").read_text()))
spec, classes = meta.preprocessing, meta.classes
if spec.crop == "lungs":
    edge_lungs.register((run / "lungs.tflite").read_bytes())
samples = [s for s in discover_many([DATA / source]) if s.label in classes or True]
def group(s):
    pid = getattr(s, "patient", None) or s.path.name
    return int(hashlib.sha256(str(pid).encode()).hexdigest(), 16) % 2
adapt = [s for s in samples if group(s) == 0]
score = [s for s in samples if group(s) == 1]
y = np.array([s.label != "normal" for s in score], int)
ps = [str(s.path) for s in score]
def auc(model):
    prob = model.predict(eval_dataset(ps, [0] * len(ps), spec, batch_size=32, cache=run / "cache" / f"ada-{source}"), verbose=0)
    ab = 1 - prob[:, classes.index("normal")]
    normals = ab[y == 0]
    return round(float(roc_auc(y, ab)), 3), round(float(normals.mean()), 3)
model = keras.models.load_model(str(run / "model.keras"), compile=False)
print(source, "patients halves:", len(adapt), len(score), "as shipped:", auc(model))
used = recalibrate(model, eval_dataset([str(s.path) for s in adapt], [0] * len(adapt), spec, batch_size=32))
print(source, f"BN re-estimated on {len(adapt)} unlabeled {source} images ({used} batches):", auc(model))
