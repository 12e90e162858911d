"""The bundled default model: what the README's first line screens with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edge.metadata import read_model_file
from edge.paths import default_model_path
from edge.runtime import TFLiteModel
from images import COVID_SAMPLE, NORMAL_SAMPLE, PNEUMONIA_SAMPLE

ROOT = Path(__file__).resolve().parent.parent


def test_bundled_model_is_a_real_int8_model_with_metadata():
    path = default_model_path()
    assert path.is_file() and path.stat().st_size < 5 * 1024 * 1024
    _, meta = read_model_file(path)
    assert (meta.name, meta.quantization) == ("cxr-default", "int8")
    assert meta.classes == ["normal", "pneumonia", "covid-19", "tuberculosis"]
    assert "val split" in meta.threshold_rule and 0.0 < meta.threshold < 1.0
    assert meta.training_data.get("known_limitations"), "what is known to be wrong must travel inside the file"
    assert "research use" in meta.training_data.get("licences", "")
    assert meta.training_data.get("held_out_sources"), "the sources it was judged on, never trained on"
    assert "cam" in meta.outputs
    # The lung crop's segmenter travels inside the file and is the one the spec names.
    spec = meta.preprocessing
    assert (spec.crop, spec.normalize) == ("lungs", "clahe") and len(spec.lungs) == 64
    model = TFLiteModel(path)
    assert model.input["dtype"].__name__ == "int8"


def test_bundled_model_crops_the_samples_to_their_lungs():
    from edge.decode import load_image
    from edge.preprocess import preprocess_info

    model = TFLiteModel(default_model_path())  # registers the segmenter inside the file
    for sample in (NORMAL_SAMPLE, PNEUMONIA_SAMPLE, COVID_SAMPLE):
        pixels = load_image(sample).pixels
        _, info = preprocess_info(pixels, model.metadata.preprocessing)
        top, bottom, left, right = info["box"]
        assert info["crop"] == "lungs", sample
        # a box inside the film, most of the film but not all of it
        h, w = pixels.shape
        assert 0.2 < (bottom - top) * (right - left) / (h * w) < 0.98, sample


def test_screening_with_review_images_runs_the_lung_segmenter_once_and_reports_the_crop(monkeypatch):
    """The review heatmap is placed with the box the screening found: one segmenter run per exam."""
    from edge import lungs
    from edge.review.images import content_box, review_images
    from edge.screening import screen_file

    model = TFLiteModel(default_model_path())
    boxes = []
    real_box = lungs.LungSegmenter.box

    def counting_box(self, pixels):
        boxes.append(pixels.shape)
        return real_box(self, pixels)

    monkeypatch.setattr(lungs.LungSegmenter, "box", counting_box)
    result = screen_file(PNEUMONIA_SAMPLE, model, model.metadata.threshold, on_screened=review_images)
    assert result.ok and result.review_images is not None and result.review_images.heatmap is not None
    assert len(boxes) == 1
    assert result.to_json()["crop"]["crop"] == "lungs"
    from edge.decode import load_image

    # the box it reports is the one the review would have found by cropping again
    assert tuple(result.crop["box"]) == tuple(content_box(load_image(PNEUMONIA_SAMPLE).pixels,
                                                          model.metadata.preprocessing))


def test_readme_first_line_screens_the_samples_sensibly():
    run = subprocess.run([sys.executable, "-m", "edge.cli", "screen", "--json", "--no-log", str(NORMAL_SAMPLE),
                          str(PNEUMONIA_SAMPLE), str(COVID_SAMPLE)], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    rows = {Path(r["file"]).name: r for r in map(json.loads, run.stdout.splitlines())}
    # Real images with known labels: a model that had not learned would not sort these three. The shipped
    # threshold (0.95 sensitivity in every training source) refers most normal films too, so the normal film's
    # decision is not asserted: its score must be the lowest and its top class normal.
    normal, pneumonia, covid = (rows[s.name] for s in (NORMAL_SAMPLE, PNEUMONIA_SAMPLE, COVID_SAMPLE))
    assert normal["abnormality"] < min(pneumonia["abnormality"], covid["abnormality"])
    assert normal["top_class"] == "normal" and covid["top_class"] != "normal"
    assert pneumonia["decision"] == "refer" and covid["decision"] == "refer"
    assert all(r["model"]["name"] == "cxr-default" for r in rows.values())


def test_readme_quick_start_lines_are_what_ci_runs():
    """.ci/run reads the quick-start lines out of README.md (.ci/lib.sh readme_line) and runs them verbatim."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    line1 = ("python3 -m venv .venv && . .venv/bin/activate && pip install . && "
             "cxr-edge screen models/samples/pneumonia-child.png --no-log")
    line2 = 'pip install -e ".[train,test]" && python -m pytest'
    assert line1 in readme.splitlines() and line2 in readme.splitlines()
    extracted = subprocess.run(["bash", "-c", "source .ci/lib.sh && readme_line 1 && readme_line 2"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.splitlines()
    assert extracted == [line1, line2]
    assert 'bash -euo pipefail -c "$line1"' in ci and 'bash -euo pipefail -c "$line2"' in ci
    assert "$(readme_line 1)" in ci and "$(readme_line 2)" in ci and ".ci/arm64-smoke.sh" in ci
