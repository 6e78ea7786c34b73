"""Preprocessing streams: peak memory does not grow with the number of samples."""

import os
import subprocess
import sys

import pytest

from data_tools.synthetic import write_synthetic_tar

PER_TAR = 10_000

# VmHWM (this process image's peak RSS), not getrusage's ru_maxrss: Linux carries ru_maxrss over
# fork+exec, so the child would report the (large) pytest parent's peak instead of its own.
_MEASURE = """
import sys
from data_tools.build import run_build
from data_tools.unit import BuildSettings
result = run_build([sys.argv[1]], sys.argv[2], sys.argv[3], BuildSettings(), "x", progress=False)
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0].split()[1]
print(result["totals"]["samples"], hwm)
"""


def _peak_rss_kb(inputs, out, tokenizer_path):
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(inputs), str(out), tokenizer_path],
                          capture_output=True, text=True, check=True, timeout=900)
    samples, rss = map(int, proc.stdout.split())
    return samples, rss


@pytest.mark.slow
def test_peak_rss_of_200k_samples_is_within_10_percent_of_20k(tmp_path, tokenizer_path):
    one = tmp_path / "one.tar"
    write_synthetic_tar(str(one), PER_TAR, size=(8, 8), distinct_images=16)
    runs = {}
    for tars in (2, 20):
        folder = tmp_path / f"in{tars}"
        folder.mkdir()
        for t in range(tars):  # hard links: identical content, cheap to make; keys repeat only across tars
            os.link(one, folder / f"{t:03d}.tar")
        runs[tars] = _peak_rss_kb(folder, tmp_path / f"out{tars}", tokenizer_path)
    assert runs[2][0] == 2 * PER_TAR and runs[20][0] == 20 * PER_TAR
    print(f"peak RSS: 20k samples {runs[2][1] / 1024:.1f} MiB, 200k samples {runs[20][1] / 1024:.1f} MiB")
    assert runs[20][1] <= 1.10 * runs[2][1], runs
