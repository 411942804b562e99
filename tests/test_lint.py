"""The workflow passes `snakemake --lint` and `snakefmt --check` (both run in CI through this test)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs snakemake --lint and snakefmt

REPO = Path(__file__).resolve().parents[1]


def test_snakemake_lint_is_clean():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Congratulations" in out, out[-4000:]


def test_snakefmt_check_passes():
    exe = shutil.which("snakefmt") or str(Path(sys.executable).with_name("snakefmt"))
    proc = subprocess.run([exe, "--check", "Snakefile", "workflow/rules"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
