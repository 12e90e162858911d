"""`cxr-edge review list/verdict/export` on a log written by a real watcher with a real two-output
(probabilities + class activation map) TFLite model; the exported page is opened in headless Chromium."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
MINI = ROOT / "tests" / "data" / "cxr-mini"
SAMPLES = ROOT / "models" / "samples"
NASTY_NAME = '<img src=x onerror="alert(1)"> & co.jpg'  # a file name that must be escaped in the page
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def build_cam_tflite(path: Path, size: int = 64) -> Path:
    """A small untrained CNN whose head is conv -> class maps -> GAP -> softmax, exported with both the
    probabilities and the class activation maps ("cam") as outputs, with cxr-edge metadata."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf
    import tf_keras as keras

    from converters.tflite_metadata import embed_metadata
    from edge.metadata import ModelMetadata
    from edge.preprocess import PreprocessSpec

    keras.utils.set_random_seed(3)
    image = keras.layers.Input((size, size, 1))
    features = keras.layers.Conv2D(6, 3, strides=2, activation="relu")(image)
    cam = keras.layers.Conv2D(3, 1, name="cam")(features)
    probabilities = keras.layers.Softmax()(keras.layers.GlobalAveragePooling2D()(cam))
    model = keras.Model(image, [probabilities, cam])
    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    from ai_edge_litert.interpreter import Interpreter
    ranks = {len(d["shape"]): i for i, d in enumerate(Interpreter(model_content=tflite).get_output_details())}
    metadata = ModelMetadata(
        name="test-cam", version="0.0.1", classes=["normal", "pneumonia", "covid-19"],
        preprocessing=PreprocessSpec(height=size, width=size), threshold=0.5,
        threshold_rule="fixed for tests", architecture="tiny-cam-test-cnn",
        outputs={"probabilities": ranks[2], "cam": ranks[4]})
    path.write_bytes(embed_metadata(tflite, metadata))
    return path


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    if check and result.returncode != 0:
        pytest.fail(f"cxr-edge {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def watch_once(folder: Path, model: Path, log: Path, *extra: str) -> None:
    cli("watch", str(folder), "--model", str(model), "--log", str(log), "--once", "--settle", "0.1",
        "--retry-delay", "0.1", *extra)


@pytest.fixture(scope="module")
def cam_model(tmp_path_factory) -> Path:
    return build_cam_tflite(tmp_path_factory.mktemp("cam") / "cam.tflite")


@pytest.fixture(scope="module")
def station(cam_model, tmp_path_factory):
    """A log with referred, normal and quarantined exams; the originals were moved away after screening."""
    base = tmp_path_factory.mktemp("station")
    log, done, failed = base / "review.sqlite", base / "done", base / "failed"
    referred_in, normal_in = base / "inbox-a", base / "inbox-b"
    referred_in.mkdir()
    normal_in.mkdir()
    files = {}
    for source in [*sorted((MINI / "Covid").glob("*.jpg"))[:3], SAMPLES / "covid-adult.png"]:
        files[shutil.copy(source, referred_in / source.name)] = "refer"
    files[shutil.copy(sorted((MINI / "PNEUMONIA").glob("*.jpg"))[0], referred_in / NASTY_NAME)] = "refer"
    for source in sorted((MINI / "NORMAL").glob("*.jpg"))[:2]:
        files[shutil.copy(source, normal_in / source.name)] = "normal"
    (referred_in / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 300 + b"IEND\xaeB`\x82")
    hashes = {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in files}
    moves = ("--move-done", str(done), "--move-failed", str(failed))
    watch_once(referred_in, cam_model, log, "--threshold", "0.0", *moves)  # everything referred
    watch_once(normal_in, cam_model, log, "--threshold", "1.0", *moves)  # nothing referred
    assert not any(referred_in.iterdir()) and not any(normal_in.iterdir())
    return {"log": log, "files": {str(p): d for p, d in files.items()}, "hashes": hashes,
            "garbage": str(referred_in / "garbage.png"), "base": base}


def listed(log: Path, *args: str) -> list[dict]:
    out = cli("review", "list", "--json", "--log", str(log), *args).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_review_list_json_has_one_record_per_exam(station):
    exams = listed(station["log"])
    assert len(exams) == len(station["files"]) + 1
    for exam in exams:
        for key in ("id", "file", "sha256", "status", "decision", "abnormality", "reason", "model", "notice"):
            assert key in exam
        if exam["file"] == station["garbage"]:
            assert exam["status"] == "quarantined" and exam["decision"] is None
            assert exam["reason_code"] == "corrupt" and "PNG" in exam["reason"]
        else:
            assert exam["status"] == "screened"
            assert exam["decision"] == station["files"][exam["file"]]
            assert exam["sha256"] == station["hashes"][exam["file"]]
            assert set(exam["probabilities"]) == {"normal", "pneumonia", "covid-19"}
            assert exam["moved_to"] and Path(exam["moved_to"]).exists()
        assert exam["model"]["name"] == "test-cam" and len(exam["model"]["sha256"]) == 64
    referred = listed(station["log"], "--referred")
    assert {e["file"] for e in referred} == {f for f, d in station["files"].items() if d == "refer"}
    assert len(listed(station["log"], "--since", "1h")) == len(exams)
    assert listed(station["log"], "--since", "2999-01-01") == []
    table = cli("review", "list", "--log", str(station["log"])).stdout
    assert "quarantined" in table and "screening aid, not a diagnosis" in table.lower()


def test_review_verdict_is_stored_beside_the_model_output(station):
    log = station["log"]
    exam = listed(log, "--referred")[0]
    result = cli("review", "verdict", str(exam["id"]), "disagree", "--note", "old scar, no pneumonia",
                 "--log", str(log))
    assert f"exam {exam['id']}: disagree" in result.stdout
    again = next(e for e in listed(log) if e["id"] == exam["id"])
    assert again["verdict"] == "disagree" and again["verdict_note"] == "old scar, no pneumonia"
    assert again["verdict_at"] and again["decision"] == exam["decision"]
    assert again["abnormality"] == exam["abnormality"]  # the model's output is untouched
    quarantined = next(e["id"] for e in listed(log) if e["status"] == "quarantined")
    for args, message in [(["999999", "agree"], "no exam with id 999999"),
                          (["1", "maybe"], "agree or disagree"),
                          ([str(quarantined), "agree"], "was not screened")]:
        bad = cli("review", "verdict", *args, "--log", str(log), check=False)
        assert bad.returncode == 2 and message in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


def export(station, out: Path, *args: str) -> str:
    return cli("review", "export", str(out), "--log", str(station["log"]), *args).stdout


def test_review_export_is_small_self_contained_and_escaped(station, tmp_path):
    out = tmp_path / "bundle"
    summary = export(station, out)
    page = (out / "index.html").read_text()
    referred = [e for e in listed(station["log"]) if e["decision"] == "refer"]
    for exam in referred:
        assert f'id="exam-{exam["id"]}"' in page and exam["sha256"] in page
    normals = [e for e in listed(station["log"]) if e["decision"] == "normal"]
    assert normals and all(f'id="exam-{e["id"]}"' not in page for e in normals)
    assert page.count('class="thumb"') == len(referred) and page.count('class="heatmap"') == len(referred)
    assert "Screening aid, not a diagnosis" in page and "test-cam" in page
    assert '<img src=x onerror' not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; co.jpg" in page
    assert "corrupt" in page  # the quarantined file and its reason
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page), "the page refers to an outside file"
    assert "<script" not in page and "http://" not in page and "https://" not in page
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert {r["file"] for r in records} == set(station["files"]) | {station["garbage"]}
    size = sum(p.stat().st_size for p in out.iterdir())
    assert size < 40_000 * len(referred), f"bundle is {size} bytes for {len(referred)} referred exams"
    assert "KiB" in summary
    print(f"\nbundle: {size} bytes for {len(referred)} referred exams ({size // len(referred)} bytes each)")


def test_review_export_without_heatmap_says_so(tiny_model, tmp_path):
    inbox, log = tmp_path / "inbox", tmp_path / "log.sqlite"
    inbox.mkdir()
    shutil.copy(SAMPLES / "pneumonia-child.png", inbox / "a.png")
    watch_once(inbox, tiny_model, log, "--threshold", "0.0")
    cli("review", "export", str(tmp_path / "bundle"), "--log", str(log))
    page = (tmp_path / "bundle" / "index.html").read_text()
    assert 'class="thumb"' in page and 'class="heatmap"' not in page
    assert "No heatmap available: this model has no &#x27;cam&#x27; output" in page


def test_heatmap_follows_the_abnormal_class_maps():
    from edge.review_images import abnormal_map, heatmap_jpeg

    cam = np.zeros((8, 8, 3), np.float32)
    cam[2, 5, 1] = 4.0  # pneumonia evidence at one place
    cam[6, 1, 0] = 4.0  # normal evidence elsewhere must not light up
    heat = abnormal_map(cam, [0.2, 0.7, 0.1], normal_index=0)
    assert np.unravel_index(np.argmax(heat), heat.shape) == (2, 5) and heat[6, 1] == 0.0
    assert abnormal_map(np.zeros((8, 8, 3)), [0.2, 0.7, 0.1], 0) is None
    jpeg, note = heatmap_jpeg(np.full((64, 64, 1), 0.5, np.float32), cam, [0.2, 0.7, 0.1], 0)
    picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (64, 64, 3) and "class activation" in note
    hot = picture[2 * 8 + 4, 5 * 8 + 4].astype(int)
    assert hot[2] > hot[0] + 60  # red where the pneumonia map is high (BGR)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no headless Chromium (Debian: apt-get install -y chromium)")


def test_exported_page_shows_the_referred_exams_in_headless_chromium(station, tmp_path):
    browser = chromium()
    out = tmp_path / "bundle"
    export(station, out)
    referred = [e for e in listed(station["log"]) if e["decision"] == "refer"]
    # A harness page opens the bundle in a frame and reports what the browser actually rendered.
    harness = tmp_path / "harness.html"
    harness.write_text(f"""<!DOCTYPE html><html><body><iframe id="f" src="{(out / 'index.html').as_uri()}"
 style="width:1100px;height:3000px"></iframe><pre id="report">pending</pre><script>
document.getElementById('f').addEventListener('load', () => {{
  const doc = document.getElementById('f').contentDocument;
  const imgs = [...doc.images];
  const report = {{
    exams: [...doc.querySelectorAll('section.exam')].map(s => s.dataset.examId),
    titles: [...doc.querySelectorAll('section.exam .file')].map(p => p.textContent),
    images: imgs.length,
    decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    notice: doc.body.innerText.includes('Screening aid, not a diagnosis'),
    alerts: typeof window.alerted !== 'undefined'
  }};
  document.getElementById('report').textContent = 'REPORT' + JSON.stringify(report) + 'END';
}});
</script></body></html>""")
    profile = tmp_path / "profile"
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--allow-file-access-from-files",
                          "--virtual-time-budget=10000", "--dump-dom", harness.as_uri()],
                         capture_output=True, text=True, timeout=120)
    match = re.search(r"REPORT(.*?)END", dom.stdout, re.S)
    assert match, f"no report from Chromium: {dom.stdout[-500:]} {dom.stderr[-1500:]}"
    report = json.loads(match.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
                        .replace("&quot;", '"'))
    assert sorted(map(int, report["exams"])) == sorted(e["id"] for e in referred)
    assert any(NASTY_NAME in title for title in report["titles"])  # shown as text, not as markup
    assert report["images"] == 2 * len(referred) and report["decoded"] == report["images"]
    assert report["notice"]
    screenshot = tmp_path / "bundle.png"
    subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1100,1400",
                    f"--screenshot={screenshot}", (out / "index.html").as_uri()],
                   capture_output=True, timeout=120)
    picture = cv2.imread(str(screenshot))
    assert picture is not None and picture.std() > 10  # something was drawn, not a blank page
    keep = os.environ.get("CXR_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(screenshot, keep)
