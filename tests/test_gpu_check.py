"""bench/gpu_check.py end to end in its CPU smoke form (tiny family, tiny sizes): the same code
path the GPU run takes, so the GPU run is never its first run."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("style_aligned", "training", "adain", "rasterizer", "vectorfusion", "app")
NUMBER = re.compile(r"^\| [^|]+ \| -?\d+(\.\d+)?(e[-+]?\d+)? \|")


@pytest.mark.slow
def test_smoke_run_reports_every_section(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--smoke", "--out", str(tmp_path)],
                          check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    reports = list(tmp_path.glob("*-smoke.md"))
    assert len(reports) == 1, proc.stdout[-2000:]
    text = reports[0].read_text()
    parts = re.split(r"^## ", text, flags=re.MULTILINE)
    found = {p.split("\n", 1)[0].strip(): p.split("\n", 1)[1] for p in parts[1:]}
    assert set(found) == set(SECTIONS)
    for name, body in found.items():
        lines = body.splitlines()
        numbers = [x for x in lines if NUMBER.match(x)]
        errors = [x for x in lines if x.startswith(("ERROR: ", "SKIPPED: "))]
        assert numbers or errors, f"{name}: neither a number nor an error line\n{body}"
    # in the smoke run nothing may fail: every section measured something
    assert "ERROR:" not in text, text
    rast = found["rasterizer"]
    assert "loop fwd+bwd" in rast and "batched fwd+bwd" in rast
