"""Measure `cxr-edge listen` on a burst: dcmtk's storescu sends N CR exams in one association.

Reports: how long the unit took to get every Success (acceptance), how long until every exam was
screened, with --pacs how long until every SR and Secondary Capture reached a real Orthanc, and the
listener's peak resident memory (VmHWM). Needs dcmtk (and orthanc for --pacs). Prints one JSON line.

    python scripts/bench_listen.py --exams 100 --size 2000 --pacs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from dicom_peers import (Orthanc, chest_dicom, chest_images, rows, start_listener, stop,  # noqa: E402
                         storescu)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def count(log: Path, sql: str) -> int:
    found = rows(log, sql)
    return int(found[0]["n"]) if found else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exams", type=int, default=100)
    parser.add_argument("--size", type=int, default=2000, help="film side in pixels (16-bit CR)")
    parser.add_argument("--pacs", action="store_true", help="also forward to a real Orthanc and time delivery")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "cxr-default.tflite")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (files, log, store)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-listen-"))
    images = chest_images()
    files = [work / "unit" / f"{i:04d}.dcm" for i in range(args.exams)]
    for i, path in enumerate(files):
        chest_dicom(path, images[i % len(images)], patient_id=f"B{i}", size=args.size + i % 7)
    megabytes = sum(p.stat().st_size for p in files) / 2**20
    orthanc = None
    extra = ["--quiet"]
    if args.pacs:
        (work / "pacs").mkdir()
        orthanc = Orthanc(work / "pacs").start()
        extra += ["--forward", orthanc.destination]
    log = work / "review.sqlite"
    listener, port = start_listener(work, args.model, *extra)
    try:
        started = time.monotonic()
        result = storescu(port, files, timeout=3600)
        accepted = time.monotonic() - started
        if result.returncode != 0:
            raise SystemExit(f"storescu failed: {result.stderr[-2000:]}")
        while count(log, "SELECT COUNT(*) AS n FROM exams") < args.exams:
            time.sleep(0.05)
        screened = time.monotonic() - started
        delivered = None
        if orthanc is not None:
            while count(log, "SELECT COUNT(*) AS n FROM outbox WHERE status = 'sent'") < 2 * args.exams:
                time.sleep(0.05)
            delivered = time.monotonic() - started
        rss = peak_rss_mib(listener.pid)
    finally:
        stop(listener)
        if orthanc is not None:
            orthanc.stop()
    statuses = rows(log, "SELECT status, COUNT(*) AS n FROM exams GROUP BY status")
    print(json.dumps({
        "exams": args.exams, "film_px": args.size, "megabytes_sent": round(megabytes, 1),
        "storescu_exit": result.returncode, "accepted_s": round(accepted, 2),
        "accepted_exams_per_s": round(args.exams / accepted, 2), "all_screened_s": round(screened, 2),
        "screened_exams_per_s": round(args.exams / screened, 2),
        "all_results_in_pacs_s": round(delivered, 2) if delivered else None,
        "statuses": {r["status"]: r["n"] for r in statuses}, "listener_peak_rss_mib": round(rss, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu", "work": str(work) if args.keep else None,
    }))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
