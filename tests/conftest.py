"""Shared fixtures: the shared real-data folder, one MLflow sqlite file per test session, and the demo workflow run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with the reason when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p}")
    return p


def covid_manifest(base: Path, dest: Path) -> pd.DataFrame:
    """Manifest of the covid-chestxray X-rays (data.md §7): de-duplicated by filename, frontal/lateral views,
    numeric offsets; the study is (patient, offset), its date day 0 + offset."""
    meta = pd.read_csv(base / "metadata.csv", dtype=str, keep_default_na=False)
    meta = meta[(meta["modality"] == "X-ray") & meta["view"].isin(["PA", "AP", "AP Supine", "L"])
                & meta["offset"].str.fullmatch(r"-?\d+")]
    meta = meta.drop_duplicates("filename", keep="first")
    day0 = pd.Timestamp("2020-01-01")
    man = pd.DataFrame({
        "subject_id": meta["patientid"], "study_id": meta["patientid"] + "_" + meta["offset"],
        "image_id": meta["filename"], "path": str(base / "images") + "/" + meta["filename"],
        "view_position": meta["view"],
        "study_date": [(day0 + pd.Timedelta(days=int(o))).strftime("%Y%m%d") for o in meta["offset"]],
        "study_time": "", "report_text": meta["clinical_notes"]})
    man.to_csv(dest, index=False)
    return man


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """One sqlite MLflow store for the whole test session (creating many is slow)."""
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return f"sqlite:///{db}"


def demo_config(workdir: Path, mlflow_uri: str, **sections) -> Path:
    """Write a small, fast variant of config.yaml into ``workdir`` (sections override keys per section)."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["demo"].update(n_patients=40, chexpert_per_class=6, rsna_test=30, rsna_val=20)
    cfg["text_pretrain"].update(max_steps=4, batch_size=8, log_every=2)
    cfg["mrm"].update(max_steps=6, batch_size=8, ckpt_every=3, log_every=2)
    cfg["align"].update(max_steps=8, batch_size=8, ckpt_every=4, log_every=2)
    cfg["mlflow"].update(tracking_uri=mlflow_uri, experiment=f"test-{workdir.name}")
    for name, values in sections.items():
        cfg[name].update(values)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 1500) -> subprocess.CompletedProcess:
    """Run the repository's Snakefile in ``workdir`` with the local profile settings."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((workdir / "logs").rglob("*.log")))
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}\n{logs}")
    return proc


@pytest.fixture(scope="session")
def demo_workflow(tmp_path_factory, mlflow_uri):
    """The demo pipeline run once through Snakemake (target `all`), shared by the workflow tests."""
    work = tmp_path_factory.mktemp("workflow")
    demo_config(work, mlflow_uri)
    proc = snakemake(work, "all")
    return work, proc
