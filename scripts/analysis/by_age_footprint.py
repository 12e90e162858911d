"""What --by-age costs a station: `cxr-edge screen --no-log --json IMAGE` end to end (wall time, peak RSS of
the process), one model against both bundled models loaded, each run a fresh process. Edge-only (no
TensorFlow); Linux (peak RSS from getrusage of the child).

usage: python scripts/analysis/by_age_footprint.py IMAGE [repeats]   prints one JSON object
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_once(image: str, extra: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one fresh `cxr-edge screen` process."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "edge.cli", "screen", "--no-log", "--json", *extra, image],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"cxr-edge screen {' '.join(extra)} {image} failed (status {status})")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def main() -> None:
    image = sys.argv[1]
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    out = {"image": image, "repeats": repeats, "machine": platform.machine()}
    for mode, extra in (("one model", []), ("--by-age", ["--by-age"])):
        runs = [run_once(image, extra) for _ in range(repeats)]
        out[mode] = {"seconds_median": statistics.median(r[0] for r in runs),
                     "seconds": [round(r[0], 3) for r in runs], "peak_rss_mib_max": max(r[1] for r in runs)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
