"""Shared fixtures and helpers: the shared real-data folder, one MLflow sqlite file and one authenticated MLflow
server per test session, the demo workflow run, DICOM writers, and a synthetic packed store with pairs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from alta import io

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with the reason when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p}")
    return p


def covid_manifest(base: Path, dest: Path) -> pd.DataFrame:
    """Manifest of the covid-chestxray X-rays (docs/data.md §7): de-duplicated by filename, frontal/lateral views,
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


def planned_jobs(work: Path, *args: str) -> dict[str, int]:
    """Rules a dry run would execute, with counts (parsed from Snakemake's job-stats table)."""
    out = snakemake(work, "-n", *args).stdout
    jobs: dict[str, int] = {}
    if "Job stats:" in out:
        table = out.split("Job stats:", 1)[1].splitlines()[3:]
        for line in table:
            m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
            if not m:
                break
            if m.group(1) not in ("total", "all"):  # `all` is the target, not a stage
                jobs[m.group(1)] = int(m.group(2))
    return jobs


@pytest.fixture(scope="session")
def demo_workflow(tmp_path_factory, mlflow_uri):
    """The demo pipeline run once through Snakemake (target `all`), shared by the workflow tests."""
    work = tmp_path_factory.mktemp("workflow")
    demo_config(work, mlflow_uri)
    proc = snakemake(work, "all")
    return work, proc


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server with the basic-auth app (one per test session; the Slurm and auth tests)."""
    import slurm_harness as harness

    try:
        s = harness.start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), auth=True)
    except harness.Unavailable as exc:
        pytest.skip(f"cannot start an MLflow server: {exc}")
    yield s
    s.stop()


# ---- DICOM files (render, extract, faults, interrupts) ------------------------------------------------------------
def make_dataset(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                 modality: str = "DX", signed: bool = False, syntax: str = ExplicitVRLittleEndian,
                 frames: int = 1, **extra) -> Dataset:
    """A minimal single-image DICOM dataset (uncompressed) around ``pixels`` (2-D, or (r, c, 3) for RGB)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    colour = pixels.ndim == 3 and frames == 1
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else photometric
    if colour:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    alloc = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored = alloc, bits_stored or alloc
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def ramp_image(shape=(60, 80), bits=12, seed=0, lo=0.5, noise=0.05) -> np.ndarray:
    """A smooth, slightly noisy ramp stored in ``bits`` bits: a radiograph stand-in that every codec can encode."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 1, shape[1])[None, :] * np.linspace(lo, 1, shape[0])[:, None]
    return (np.clip(base + rng.normal(0, noise, shape), 0, 1) * (2 ** bits - 1)).astype(np.uint16)


def study_dir(root: Path, subject: str, study: str) -> Path:
    """``files/pXX/pSUBJECT/sSTUDY`` under ``root`` (MIMIC-CXR layout), created."""
    d = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_dicom(path: Path, ds: Dataset) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# ---- a synthetic packed store and pairs table (loader, trainer, evaluate, probe, text) -------------------------
SENTENCES = ["No acute cardiopulmonary process.", "Heart size is normal.", "There is a small left effusion.",
             "Lungs are clear?", "Mild atelectasis at the bases.", "Seen by Dr. Smith today.",
             "No pneumothorax.", "Stable cardiomediastinal silhouette."]


def build_synthetic(root: Path, n_subjects: int = 8, studies: int = 3, short: int = 128, seed: int = 0):
    """Write a packed store + images.parquet + pairs.parquet in the contract formats; return their paths."""
    rng = np.random.default_rng(seed)
    shard_dir = root / "shards" / "m00"
    shard_dir.mkdir(parents=True, exist_ok=True)
    store = shard_dir / "store.u8"
    img_rows, pair_rows, off = [], [], 0
    with open(store, "wb") as fh:
        for s in range(n_subjects):
            subj = f"{s:03d}a"
            split = "validate" if s >= n_subjects - 3 else "train"
            prev = None
            for k in range(studies):
                study = f"5{s:02d}{k}"
                views = {"PA": f"{study}f"}
                if (s + k) % 3 != 0:
                    views["LATERAL"] = f"{study}l"
                if k % 2 == 1:
                    views["AP"] = f"{study}g"  # a second frontal -> two rows of one study
                for vp, iid in sorted(views.items(), key=lambda kv: kv[1]):
                    h, w = (short, short + 16) if vp != "LATERAL" else (short + 8, short)
                    img = rng.integers(0, 256, (h, w), dtype=np.uint8)
                    img.tofile(fh)
                    img_rows.append(dict(image_id=iid, subject_id=subj, study_id=study, shard="m00",
                                         ViewPosition=vp, store_file="shards/m00/store.u8", store_offset=off,
                                         height=h, width=w))
                    off += h * w
                text = " ".join(rng.permutation(SENTENCES)[: 2 + (s + k) % 4])
                for vp in ("PA", "AP"):
                    if vp not in views:
                        continue
                    pair_rows.append(dict(
                        subject_id=subj, study_id=study, dicom_id=views[vp], view_position=vp, split=split,
                        cl_dicom_id=views.get("LATERAL"), prior_study_id=prev and prev[0],
                        pf_dicom_id=prev and prev[1].get("PA"), pl_dicom_id=prev and prev[1].get("LATERAL"),
                        text=text, text_source="findings+impression", n_words=len(text.split())))
                prev = (study, views)
    images = pd.DataFrame(img_rows)
    pairs = pd.DataFrame(pair_rows)
    for c in ("cl_dicom_id", "prior_study_id", "pf_dicom_id", "pl_dicom_id"):
        pairs[c] = pairs[c].astype("string")
    io.write_parquet(root / "images.parquet", images)
    io.write_parquet(root / "pairs.parquet", pairs)
    return root / "pairs.parquet", root / "images.parquet", root


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """Synthetic pairs, packed store and a tokenizer trained on their texts (the trainer, probe and text tests)."""
    from alta.train.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("train")
    pairs, images, extract = build_synthetic(root)
    train_tokenizer(io.read_parquet(pairs)["text"].tolist(), root / "tok", vocab_size=300)
    return SimpleNamespace(pairs=pairs, images=images, extract=extract, tok=root / "tok", root=root)
