"""A mixed-age station (--by-age): each DICOM goes to the bundled model for its patient's age, with that
model's own threshold, in `screen`, `watch` and `listen` (with results sent to a real Orthanc), and
`review stats --model` reads each model's exams apart. Real DICOMs, the real bundled models, the CLI
as a process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge.metadata import read_model_file
from images import aged_dicoms

ROOT = Path(__file__).resolve().parents[1]
DEFAULT, PEDIATRIC = (read_model_file(ROOT / "models" / f"{n}.tflite")[1] for n in ("cxr-default", "cxr-pediatric"))


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def records(done: subprocess.CompletedProcess) -> dict[str, dict]:
    return {Path(r["file"]).name: r for r in map(json.loads, done.stdout.splitlines())}


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    return aged_dicoms(tmp_path_factory.mktemp("mixed"))


def test_each_film_goes_to_the_model_for_its_age_with_that_models_threshold(films):
    done = cli("screen", "--by-age", "--no-log", "--json", *(str(films[n]) for n in ("child", "adult", "teen",
                                                                                       "unknown")))
    assert done.returncode == 0, done.stderr
    got = records(done)
    assert {n: r["model"]["name"] for n, r in got.items()} == {
        "child.dcm": "cxr-pediatric", "adult.dcm": "cxr-default", "teen.dcm": "cxr-default",
        "unknown.dcm": "cxr-default"}  # no age: --model's (the default)
    assert got["child.dcm"]["threshold"] == pytest.approx(PEDIATRIC.threshold)
    assert got["adult.dcm"]["threshold"] == pytest.approx(DEFAULT.threshold)
    # the same scores as screening each film with its model alone
    alone = records(cli("screen", "-m", "cxr-pediatric", "--no-log", "--json", str(films["child"])))["child.dcm"]
    assert got["child.dcm"]["probabilities"] == alone["probabilities"]
    assert got["child.dcm"]["model"] == alone["model"]
    adult = records(cli("screen", "--no-log", "--json", str(films["adult"])))["adult.dcm"]
    assert got["adult.dcm"]["probabilities"] == adult["probabilities"]
    # --model picks where films without an age go
    other = records(cli("screen", "--by-age", "-m", "cxr-pediatric", "--no-log", "--json", str(films["unknown"]),
                        str(films["adult"])))
    assert other["unknown.dcm"]["model"]["name"] == "cxr-pediatric"
    assert other["adult.dcm"]["model"]["name"] == "cxr-default"


def test_the_table_names_the_model_of_each_film_and_a_single_threshold_is_refused(films):
    table = subprocess.run([sys.executable, "-m", "edge.cli", "screen", "--by-age", "--no-log", str(films["child"]),
                            str(films["adult"])], capture_output=True, text=True, timeout=120, cwd=ROOT,
                           env={**__import__("os").environ, "COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert "cxr-pediatric" in next(line for line in lines if "child.dcm" in line)
    assert "cxr-default" in next(line for line in lines if "adult.dcm" in line)
    assert "for ages under 15: 1 screened" in table.stdout and "for ages 15 and over: 1 screened" in table.stdout
    refused = cli("screen", "--by-age", "--threshold", "0.3", "--no-log", str(films["child"]))
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1
    assert "--threshold" in refused.stderr and "Traceback" not in refused.stderr


def test_watch_by_age_logs_both_models_knows_screen_results_and_stats_read_each_model(films, tmp_path):
    log = tmp_path / "review.sqlite"
    first = cli("screen", "--by-age", "--log", str(log), "--json", str(films["child"]))
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "incoming"
    folder.mkdir()
    for name in ("child", "adult", "unknown"):
        (folder / f"{name}.dcm").write_bytes(films[name].read_bytes())
    done = cli("watch", str(folder), "--by-age", "--once", "--log", str(log), "--settle", "0")
    assert done.returncode == 0, done.stderr
    assert "cxr-pediatric 1" in done.stdout and "ages under 15" in done.stdout  # the start line names both
    assert "not calibrated for this site: cxr-edge calibrate -m cxr-pediatric" in done.stdout
    exams = [json.loads(line) for line in cli("review", "list", "--json", "--log", str(log)).stdout.splitlines()]
    # the child screened by `screen` is known by its content: a duplicate, not a second result
    assert [(Path(e["file"]).name, e["model"]["name"]) for e in exams] == [
        ("child.dcm", "cxr-pediatric"), ("adult.dcm", "cxr-default"), ("unknown.dcm", "cxr-default")]
    assert "duplicate of exam 1" in done.stdout
    both = json.loads(cli("review", "stats", "--json", "--log", str(log)).stdout)
    assert both["screened"] == 3 and any("2 models screened these exams" in a for a in both["alerts"])
    child = json.loads(cli("review", "stats", "--json", "--model", "cxr-pediatric", "--log", str(log)).stdout)
    assert child["screened"] == 1 and [m["name"] for m in child["models"]] == ["cxr-pediatric"]
    assert not any("models screened" in a for a in child["alerts"])
    by_hash = json.loads(cli("review", "stats", "--json", "--model", exams[1]["model"]["sha256"][:8],
                             "--log", str(log)).stdout)
    assert by_hash["screened"] == 2
    unknown = cli("review", "stats", "--model", "cxr-adult", "--log", str(log))
    assert unknown.returncode == 2 and "cxr-pediatric" in unknown.stderr and len(unknown.stderr.splitlines()) == 1


def test_listen_by_age_screens_children_and_adults_and_sends_each_models_results(tmp_path):
    from dicom_peers import Orthanc, chest_dicom, chest_images, rows, start_listener, stop, storescu, wait_for

    (tmp_path / "orthanc").mkdir()
    pacs = Orthanc(tmp_path / "orthanc").start()
    try:
        unit = tmp_path / "unit"
        child = chest_dicom(unit / "child.dcm", chest_images()[0], patient_id="PCHILD")
        child.PatientAge = "006Y"
        child.save_as(unit / "child.dcm", enforce_file_format=True)
        chest_dicom(unit / "adult.dcm", chest_images()[0], patient_id="PADULT")  # born 1980
        log = tmp_path / "review.sqlite"
        listener, port = start_listener(tmp_path, ROOT / "models" / "cxr-default.tflite", "--by-age",
                                        "--forward", pacs.destination, "--forward-retry", "0.3")
        try:
            stored = storescu(port, [unit / "child.dcm", unit / "adult.dcm"])
            assert stored.returncode == 0, stored.stderr
            wait_for(lambda: len(rows(log, "SELECT * FROM outbox WHERE status = 'sent'")) == 4,
                     "the SR and SC of both exams sent to Orthanc", listener)
        finally:
            assert stop(listener) == 0
        exams = {e["model_name"]: e for e in rows(log, "SELECT * FROM exams ORDER BY id")}
        assert sorted(exams) == ["cxr-default", "cxr-pediatric"]  # nobody quarantined as age_out_of_range
        assert {e["status"] for e in exams.values()} == {"screened"}
        assert exams["cxr-pediatric"]["threshold"] == pytest.approx(PEDIATRIC.threshold)
        arrived = {i["SOPInstanceUID"]: i for i in pacs.instances()}
        for name, exam in exams.items():
            sent = rows(log, f"SELECT * FROM outbox WHERE exam_id = {exam['id']}")
            assert sorted(o["kind"] for o in sent) == ["sc", "sr"]
            for obj in sent:
                tags = arrived[obj["sop_instance_uid"]]
                assert tags["PatientID"] == ("PCHILD" if name == "cxr-pediatric" else "PADULT")
                # built with the model that screened this film (the forwarder holds both)
                assert exam["model_sha256"][:40] in tags["SoftwareVersions"]
    finally:
        pacs.stop()


def _relabelled(path: Path, name: str, ages) -> Path:
    """cxr-pediatric's network under another name and stated ages: a site's own model (another sha256; no
    input gate, which would have to lie beside it)."""
    from converters.tflite_metadata import embed_metadata
    from edge.metadata import ModelMetadata

    data, meta = (ROOT / "models" / "cxr-pediatric.tflite").read_bytes(), PEDIATRIC.to_dict()
    path.write_bytes(embed_metadata(data, ModelMetadata.from_dict({**meta, "name": name, "ages": ages, "gate": {}})))
    return path


def test_a_sites_own_childrens_model_takes_the_place_of_cxr_pediatric(films, tmp_path):
    own = _relabelled(tmp_path / "site-children.tflite", "site-children", [0, 15])
    got = records(cli("screen", "--by-age", "-m", str(own), "--no-log", "--json", str(films["child"]),
                      str(films["adult"]), str(films["unknown"])))
    assert {n: r["model"]["name"] for n, r in got.items()} == {
        "child.dcm": "site-children", "adult.dcm": "cxr-default", "unknown.dcm": "site-children"}
    # a site's model for under 12 leaves 12-14 to nobody (cxr-pediatric overlaps it): refused, and said so
    young = _relabelled(tmp_path / "under-12.tflite", "under-12", [0, 12])
    thirteen = films["child"].parent / "thirteen.dcm"
    thirteen.write_bytes(films["child"].read_bytes().replace(b"004Y", b"013Y"))
    gap = records(cli("screen", "--by-age", "-m", str(young), "--no-log", "--json", str(thirteen)))["thirteen.dcm"]
    assert gap["status"] == "refused" and gap["reason_code"] == "age_out_of_range"
    assert "none of the models of --by-age is for that age" in gap["reason"] and "-m cxr-pediatric," in gap["reason"]
    anyone = _relabelled(tmp_path / "any-age.tflite", "any-age", [])  # states no ages: nothing to route
    refused = cli("screen", "--by-age", "-m", str(anyone), "--no-log", str(films["child"]))
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1
    assert "any-age is for any age" in refused.stderr and "nothing to route to" in refused.stderr


def _csv_dataset(folder: Path, rows: list[tuple[str, str, int]]) -> Path:
    """A labelled folder in NIH's layout (labels.csv with an age column + images/) from cxr-mini's films."""
    import shutil

    (folder / "images").mkdir(parents=True)
    lines = ["file,label,patient_id,age,view"]
    for i, (source, label, age) in enumerate(rows):
        shutil.copy(ROOT / "tests" / "data" / "cxr-mini" / source, folder / "images" / f"{i}.jpg")
        lines.append(f"images/{i}.jpg,{label},p{i},{age},PA")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_eval_by_age_scores_each_image_with_the_model_for_its_age(tmp_path):
    normal, pneumonia = sorted((ROOT / "tests/data/cxr-mini/NORMAL").iterdir()), \
        sorted((ROOT / "tests/data/cxr-mini/PNEUMONIA").iterdir())
    children = [(f"NORMAL/{p.name}", "NORMAL", 6) for p in normal[:4]] + \
               [(f"PNEUMONIA/{p.name}", "PNEUMONIA", 9) for p in pneumonia[:4]]
    adults = [(f"NORMAL/{p.name}", "NORMAL", 40) for p in normal[4:]] + \
             [(f"PNEUMONIA/{p.name}", "PNEUMONIA", 55) for p in pneumonia[4:]]
    mixed = _csv_dataset(tmp_path / "mixed", children + adults)
    done = cli("eval", str(mixed), "--by-age", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    parts = {p["model"]["name"]: p["screening"] for p in report["by_age_routing"]}
    assert {name: s["n"] for name, s in parts.items()} == {"cxr-pediatric": 8, "cxr-default": 8}
    assert parts["cxr-pediatric"]["threshold"] == pytest.approx(PEDIATRIC.threshold)
    # each part is what `eval -m MODEL` gives on those images alone
    for name, rows in (("cxr-pediatric", children), ("cxr-default", adults)):
        alone = json.loads(cli("eval", str(_csv_dataset(tmp_path / name, rows)), "-m", name, "--json").stdout)
        assert {k: alone["screening"][k] for k in ("tp", "fn", "fp", "tn", "auc")} == \
            {k: parts[name][k] for k in ("tp", "fn", "fp", "tn", "auc")}
    together = report["screening"]
    assert together["n"] == 16 and together["auc"] is None
    assert [together[k] for k in ("tp", "fn", "fp", "tn")] == \
        [sum(s[k] for s in parts.values()) for k in ("tp", "fn", "fp", "tn")]
    refused = cli("eval", str(mixed), "--by-age", "--threshold", "0.2")
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1
