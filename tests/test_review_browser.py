"""The remote doctor's round trip in a real headless Chromium, driven over the DevTools protocol:
open the exported bundle, look at the film and the heatmap, click verdicts, type a note and a name,
save the verdicts file (a real download), import it at the station, and see it in list and stats."""

from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pytest

from cdp import Browser
from review_station import build_cam_tflite, bundle_data, chromium, cli, export, listed, make_station


@pytest.fixture(scope="module")
def station(tmp_path_factory):
    base = tmp_path_factory.mktemp("browser-station")
    return make_station(base, build_cam_tflite(base / "cam.tflite"))


def test_doctor_gives_verdicts_in_the_page_and_the_station_imports_them(station, tmp_path):
    executable = chromium()
    log = station["log"]
    out = tmp_path / "bundle"
    export(log, out)
    data = bundle_data(out)
    referred = [e for e in listed(log, "--referred")]
    agree_id, disagree_id = referred[0]["id"], referred[1]["id"]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with Browser(executable, tmp_path / "profile") as browser:
        browser.download_to(downloads)
        browser.open((out / "index.html").as_uri())
        seen = browser.evaluate("""Promise.all([...document.images].map(i => i.decode().then(() => true, () => false)))
            .then(ok => ({decoded: ok.filter(Boolean).length, images: ok.length,
                          films: [...document.querySelectorAll('img.film-img')].map(i => i.naturalWidth),
                          exams: [...document.querySelectorAll('section.exam')].map(s => Number(s.dataset.examId)),
                          notice: document.body.innerText.includes('Screening aid, not a diagnosis'),
                          heat: getComputedStyle(document.querySelector('img.heat')).display}))""")
        assert sorted(seen["exams"]) == sorted(e["id"] for e in referred)
        assert seen["decoded"] == seen["images"] == 2 * len(referred)  # a film and a heatmap each, all decodable
        assert seen["notice"] and seen["heat"] == "none"  # the film is read clean; the heatmap is a toggle
        browser.click(f"#heat-{agree_id}")
        assert browser.evaluate(f"getComputedStyle(document.querySelector('#exam-{agree_id} img.heat')).display") \
            == "block"
        browser.click(f"input[name=verdict-{agree_id}][value=agree]")
        browser.click(f"input[name=verdict-{disagree_id}][value=disagree]")
        browser.type_into(f"textarea[name=note-{disagree_id}]", "old scar, no consolidation")
        browser.click("#save")  # no reviewer name yet: nothing is saved, the page says why
        assert "Type your name" in browser.evaluate("document.getElementById('save-status').textContent")
        browser.type_into("#reviewer", "Dr Remote")
        browser.click("#save")
        saved = browser.wait_download(downloads)
        screenshot = browser.send("Page.captureScreenshot", {"format": "png"})["data"]
    verdicts = json.loads(saved.read_text())
    assert verdicts["bundle_id"] == data["bundle_id"] and verdicts["station_id"] == data["station_id"]
    by_exam = {v["exam_id"]: v for v in verdicts["verdicts"]}
    assert set(by_exam) == {agree_id, disagree_id}
    assert by_exam[agree_id]["verdict"] == "agree" and by_exam[agree_id]["note"] is None
    assert by_exam[disagree_id]["verdict"] == "disagree"
    assert by_exam[disagree_id]["note"] == "old scar, no consolidation"
    for exam_id, v in by_exam.items():
        assert v["reviewer"] == "Dr Remote" and v["time"].endswith("Z")
        assert v["image_sha256"] == next(e["sha256"] for e in referred if e["id"] == exam_id)
    imported = cli("review", "import", str(saved), "--log", str(log))
    assert "2 verdicts imported, 0 already present, 0 refused" in imported.stdout
    again = cli("review", "import", str(saved), "--log", str(log))  # idempotent
    assert "0 verdicts imported, 2 already present, 0 refused" in again.stdout
    exams = {e["id"]: e for e in listed(log)}
    assert (exams[agree_id]["verdict"], exams[agree_id]["verdict_by"]) == ("agree", "Dr Remote")
    assert exams[disagree_id]["verdict_note"] == "old scar, no consolidation"
    assert len(exams[agree_id]["verdicts"]) == 1 and exams[agree_id]["verdicts"][0]["source"] == "import"
    assert "Remote" in cli("review", "list", "--log", str(log)).stdout
    stats = json.loads(cli("review", "stats", "--json", "--log", str(log)).stdout)
    agreement = stats["agreement"]
    assert (agreement["tp"], agreement["fp"], agreement["reviewed"]) == (1, 1, 2)
    assert agreement["sensitivity"] == 1.0 and agreement["specificity"] == 0.0
    picture = cv2.imdecode(np.frombuffer(base64.b64decode(screenshot), np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None and picture.std() > 10  # something was drawn, not a blank page
