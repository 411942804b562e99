"""Smoke test of the bench command: ``bench/run.py --quick --only extraction`` runs and writes valid results.

No timing is asserted (docs/architecture.md: performance is measured by bench/, never by timed assertions in tests);
only that the command works end to end and that its outputs have the documented structure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the bench as a subprocess
REPO = Path(__file__).resolve().parents[1]
SHARED_DICOM = REPO.parent / "shared" / "data" / "dicom"


def test_bench_quick_extraction_writes_results(tmp_path):
    if not (REPO / "bench" / "run.py").is_file():
        pytest.skip("bench/run.py is not in this checkout")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--only", "extraction",
                           "--out-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    for key in ("command", "quick", "started_utc", "duration_s", "machine", "versions", "threads", "rows",
                "targets", "sections", "errors"):
        assert key in res, key
    assert res["quick"] is True and res["errors"] == {}
    assert set(res["sections"]) == {"extraction"}
    assert res["versions"]["torch"] and res["machine"]["usable_cpus"] >= 1
    for r in res["rows"]:
        assert set(r) == {"section", "metric", "value", "unit", "note"} and r["section"] == "extraction"
    ext = res["sections"]["extraction"]
    assert "large_16bit" in ext["sets"]
    for key, s in ext["sets"].items():
        for method in ("naive", "ours", "decode"):
            assert s[method]["median_s"] > 0 and s[method]["images_per_s"] > 0, (key, method)
        assert s["speedup_vs_naive"] > 0 and s["cost_vs_decode"] > 0
        assert set(s["ours_breakdown_ms"]) == {"decode", "render", "resize", "write"}
    assert ext["scaling"]["workers_1"]["median_s"] > 0 and ext["scaling"]["workers_2"]["median_s"] > 0
    if SHARED_DICOM.is_dir():
        assert {"real_implicit_vr", "real_jpeg_baseline", "real_jpeg2000"} <= set(ext["sets"])
        names = {t["name"] for t in res["targets"]}
        assert "extraction JPEG 2000: ours / decode-only" in names
    md = (tmp_path / "results.md").read_text()
    assert "python -m bench.run --quick --only extraction" in md and "| section | metric |" in md
    assert "real_jpeg2000" in md or not SHARED_DICOM.is_dir()
