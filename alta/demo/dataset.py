"""Synthetic demo dataset in the exact MIMIC-CXR layout (docs/data.md §1), plus benchmark files (docs/evaluation.md §7).

``alta demo --out DIR [--n-patients 150] [--seed 0]`` writes, deterministically for a seed (identical bytes):

- ``DIR/files/pXX/pSUBJECT/sSTUDY/<dicom_id>.dcm`` (valid DICOM Part-10 files, mixed transfer syntaxes:
  implicit/explicit VR LE, JPEG baseline, JPEG 2000 lossless/lossy, RLE; MONOCHROME1/2; 8/12/16 bits stored;
  planted PHI in PatientName, PatientBirthDate, AccessionNumber, InstitutionName, ... and a private tag);
- ``DIR/files/pXX/pSUBJECT/sSTUDY.txt`` (MIMIC-style free-text report, docs/data.md §3.1);
- ``DIR/mimic-cxr-2.0.0-metadata.csv.gz`` (12 columns of docs/data.md §1.4; StudyTime as MIMIC float, e.g. 80556.875),
  ``DIR/mimic-cxr-2.0.0-split.csv.gz`` (dicom_id, study_id, subject_id, split; patient-disjoint, ~15 % of patients
  each in validate and test), ``DIR/mimic-cxr-2.0.0-chexpert.csv.gz`` (subject_id, study_id, 14 labels
  alphabetical; 1.0 / 0.0 / -1.0 / blank);
- ``DIR/benchmarks/...`` from held-out patients (see ``alta.demo.benchmark_files``);
- ``DIR/demo_truth.json`` (seed, sizes, planted_phi, per-syntax/photometric/bits counts, expected pairing coverage)
  and ``DIR/demo_truth.parquet`` (one row per image: ids, view, codec, header choices, study time, latent state).
- with ``--large N``: ``DIR/large/files/...`` N big 16-bit DICOMs (~2000x2500) for performance benchmarks.

Images and reports follow the same latent state (``alta.demo.findings``) that evolves between a patient's studies.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from alta import io as aio
from alta.cli import SECTION_HELP, parse_args
from alta.demo.benchmark_files import write_benchmarks
from alta.demo.dicom import CODECS, ImageSpec, dicom_bytes, uid_from
from alta.demo.findings import CHEXPERT_LABELS_ALPHA, State, chexpert_labels
from alta.demo.layout import dicom_id, mimic_float_time, plan_dataset
from alta.demo.phantom import render
from alta.demo.reports import mimic_report

log = logging.getLogger(__name__)
METADATA_COLUMNS = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]
FRONTAL, LATERAL = ("PA", "AP"), ("LATERAL", "LL")
ROLE_FROM_MEANING = {"postero-anterior": "PA", "antero-posterior": "AP", "lateral": "LATERAL", "left lateral": "LL"}


def study_dir(root: Path, subject_id: str, study_id: str) -> Path:
    return root / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}"


def _phi(subject_id: str, study_id: str, rng_bd: int, did: str) -> dict[str, str]:
    """Distinctive, greppable PHI values; the birth date lies in 2060-2129, never a StudyDate (2150+) or an id."""
    return {"PatientName": f"DEMO^PHI^SUBJECT{subject_id}", "PatientID": f"PHIPID{subject_id}X",
            "PatientBirthDate": f"{rng_bd}", "AccessionNumber": f"PHIACC{study_id}",
            "InstitutionName": f"PHI DEMO HOSPITAL {subject_id}", "ReferringPhysicianName": f"PHIREFDOC^{subject_id}",
            "PatientAddress": f"PHI {subject_id} DEMO STREET", "OtherPatientIDs": f"PHIOTHER{subject_id}",
            "ImageComments": f"PHI COMMENT {did[:8]}: seen by Dr PHIREFDOC", "private": f"PHIPRIVATE{subject_id}"}


def effective_view(view_position: str, meaning: str) -> str:
    """ViewPosition, else the ViewCodeSequence fallback (docs/data.md §1.4), else ''."""
    return view_position or ROLE_FROM_MEANING.get(meaning, "")


def pairing_coverage(truth: pd.DataFrame) -> dict:
    """Expected coverage of the pairing rules (docs/data.md §4.3) computed from what was planted.

    A "frontal row" is an image whose effective view (ViewPosition, else ViewCodeSequence) is PA/AP; every study
    has a report. Its prior is the same patient's study with the largest StudyDate+StudyTime strictly earlier that
    has >= 1 frontal; ties among candidates go to a study with a same-ViewPosition frontal, then one with a
    lateral, then the smallest study_id. ``with_prior_lateral`` needs a lateral in that prior study.
    """
    t = truth.assign(eff=[effective_view(v, m) for v, m in zip(truth.view_position, truth.view_meaning)])
    by_study = {s: g for s, g in t.groupby("study_id", sort=True)}
    studies = t.drop_duplicates("study_id")[["subject_id", "study_id", "study_datetime"]]
    info = {s: {"subject": g.subject_id.iloc[0], "t": g.study_datetime.iloc[0],
                "frontals": set(g.eff[g.eff.isin(FRONTAL)]), "lateral": bool(g.eff.isin(LATERAL).any())}
            for s, g in by_study.items()}
    rows = t[t.eff.isin(FRONTAL)]
    c = Counter()
    for r in rows.itertuples():
        me = info[r.study_id]
        c["frontal_rows"] += 1
        c["with_lateral"] += me["lateral"]
        cands = [s for s, i in info.items() if i["subject"] == r.subject_id and i["t"] < me["t"] and i["frontals"]]
        if not cands:
            continue
        latest = max(info[s]["t"] for s in cands)
        tied = sorted((s for s in cands if info[s]["t"] == latest),
                      key=lambda s: (r.eff not in info[s]["frontals"], not info[s]["lateral"], s))
        prior = info[tied[0]]
        c["with_prior"] += 1
        c["prior_tie"] += len(tied) > 1
        c["prior_same_view"] += r.eff in prior["frontals"]
        c["with_prior_lateral"] += prior["lateral"]
        c["all_four"] += prior["lateral"] and me["lateral"]
    times = studies.groupby("subject_id").study_datetime.apply(lambda s: int(s.duplicated().sum()))
    return {
        "definition": " ".join(pairing_coverage.__doc__.split("\n\n")[1].split()),
        "studies": int(len(studies)), "images": int(len(t)),
        "studies_with_frontal": int(sum(bool(i["frontals"]) for i in info.values())),
        "studies_with_lateral": int(sum(i["lateral"] for i in info.values())),
        "images_blank_view_with_fallback": int(((t.view_position == "") & (t.view_meaning != "")).sum()),
        "images_no_view": int((t.eff == "").sum()),
        "study_time_ties": int(times.sum()),
        "frontal_rows": c["frontal_rows"], "frontal_rows_with_lateral": c["with_lateral"],
        "frontal_rows_with_prior": c["with_prior"], "frontal_rows_with_prior_lateral": c["with_prior_lateral"],
        "frontal_rows_all_four": c["all_four"], "frontal_rows_prior_same_view": c["prior_same_view"],
        "frontal_rows_prior_tie": c["prior_tie"],
    }


def _split(subjects: list[str], rng: np.random.Generator, frac: float = 0.15) -> dict[str, str]:
    order = [subjects[i] for i in rng.permutation(len(subjects))]
    k = max(1, int(round(frac * len(subjects))))
    return {s: ("validate" if i < k else "test" if i < 2 * k else "train") for i, s in enumerate(order)}


def _write_image(job) -> None:
    path, state, view, rows, columns, spec, pixel_seed = job
    img = render(state, view, rows, columns, np.random.default_rng(pixel_seed))
    aio.write_bytes(path, dicom_bytes(img, spec))


def generate(out: Path, n_patients: int = 150, seed: int = 0, workers: int = 1, **sizes) -> dict:
    """Write the whole demo dataset under ``out`` and return the truth summary (also ``demo_truth.json``).

    ``workers`` processes render and write the images and the benchmark files; the bytes are the same for any
    number of workers.

    ``sizes``: chexpert_per_class (20), image_queries (3), rsna_test (120), rsna_val (60), rsna_size (1024),
    large (0), large_shape ((2500, 2000)).
    """
    out = Path(out)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    patients, images = plan_dataset(n_patients, rng)
    split = _split([p["subject_id"] for p in patients], rng)
    birth = {p["subject_id"]: f"{int(rng.integers(2060, 2130))}{int(rng.integers(1, 13)):02d}"
                              f"{int(rng.integers(1, 29)):02d}" for p in patients}
    studies = {s["study_id"]: (p, s) for p in patients for s in p["studies"]}
    by_study: dict[str, list[dict]] = {}
    for im in images:
        by_study.setdefault(im["study_id"], []).append(im)

    # Reports: one per study, comparing with the previous study of the same patient.
    chex_rows = []
    for p in patients:
        prev: State | None = None
        for s in p["studies"]:
            text, neg = mimic_report(s["state"], prev, list(s["views"]), rng)
            aio.write_text(study_dir(out, p["subject_id"], s["study_id"]).with_suffix(".txt"), text)
            labels = chexpert_labels(s["state"], neg)
            if "concerning for pneumonia" in text.replace("\n ", " "):
                labels["Pneumonia"] = -1.0
            chex_rows.append({"subject_id": p["subject_id"], "study_id": s["study_id"], **labels})
            prev = s["state"]

    # Images: headers and table rows here; rendering, encoding and writing in `workers` processes. Each image draws
    # its pixels from its own generator (a seed taken from `rng` in image order), so the bytes do not depend on the
    # number of workers or on the order in which they finish.
    meta_rows, truth_rows, phi_values, jobs = [], [], set(), []
    for im in images:
        p, s = studies[im["study_id"]]
        did = im["dicom_id"]
        phi = _phi(p["subject_id"], s["study_id"], int(birth[p["subject_id"]]), did)
        phi_values.update(v for v in phi.values())
        slope, intercept = (2.0, -100.0) if int(did[:2], 16) % 11 == 0 else (1.0, 0.0)
        spec = ImageSpec(
            codec=im["codec"], photometric=im["photometric"], bits_stored=im["bits_stored"], modality=im["modality"],
            study_uid=uid_from(seed, "study", s["study_id"]), series_uid=uid_from(seed, "series", s["study_id"], im["view"]),
            sop_uid=uid_from(seed, "sop", did), study_date=s["date"], study_time=s["time"],
            view_position=im["view_position"], view_code=im["view"] if im["view_meaning"] else "",
            orientation=im["orientation"], procedure=s["procedure"], slope=slope, intercept=intercept,
            pixel_spacing=round(0.139 * 3000 / im["rows"], 6), phi=phi)
        if spec.codec == "jpeg_baseline":
            spec.bits_stored = 8  # what dicom_bytes writes (8-bit JPEG), recorded in the truth table
        path = study_dir(out, p["subject_id"], s["study_id"]) / f"{did}.dcm"
        jobs.append((path, s["state"], im["view"], im["rows"], im["columns"], spec, int(rng.integers(2**63))))
        meta_rows.append({"dicom_id": did, "subject_id": p["subject_id"], "study_id": s["study_id"],
                          "PerformedProcedureStepDescription": s["procedure"], "ViewPosition": im["view_position"],
                          "Rows": str(im["rows"]), "Columns": str(im["columns"]), "StudyDate": s["date"],
                          "StudyTime": mimic_float_time(s["time"]), "ProcedureCodeSequence_CodeMeaning": s["procedure"],
                          "ViewCodeSequence_CodeMeaning": im["view_meaning"],
                          "PatientOrientationCodeSequence_CodeMeaning": im["orientation"]})
        truth_rows.append({
            "dicom_id": did, "subject_id": p["subject_id"], "study_id": s["study_id"], "split": split[p["subject_id"]],
            "path": str(path.relative_to(out)),
            "view": im["view"], "view_position": im["view_position"], "view_meaning": im["view_meaning"],
            "transfer_syntax": str(CODECS[im["codec"]]), "codec": im["codec"], "photometric": im["photometric"],
            "bits_stored": int(spec.bits_stored), "modality": im["modality"], "rows": im["rows"],
            "columns": im["columns"], "rescale_slope": slope, "rescale_intercept": intercept,
            "study_date": s["date"], "study_time": s["time"], "study_index": s["index"], "time_tie": s["tie"],
            "study_datetime": pd.Timestamp(f"{s['date']} {s['time'][:2]}:{s['time'][2:4]}:{s['time'][4:]}"),
            **s["state"].as_row()})
    bench_args = dict(per_class=sizes.get("chexpert_per_class", 20), image_queries=sizes.get("image_queries", 3),
                      rsna_test=sizes.get("rsna_test", 120), rsna_val=sizes.get("rsna_val", 60),
                      rsna_size=sizes.get("rsna_size", 1024))
    with concurrent.futures.ProcessPoolExecutor(max(1, workers)) as pool:
        # the benchmark files (their own generator) go first, beside the images
        bench_future = pool.submit(write_benchmarks, out, np.random.default_rng([seed, 1]), **bench_args)
        for _ in tqdm(pool.map(_write_image, jobs, chunksize=16), total=len(jobs), desc="demo dicoms", disable=None):
            pass
        bench = bench_future.result()

    meta = pd.DataFrame(meta_rows, columns=METADATA_COLUMNS).sort_values(["subject_id", "study_id", "dicom_id"])
    aio.write_csv_gz(out / "mimic-cxr-2.0.0-metadata.csv.gz", meta)
    sp = meta[["dicom_id", "study_id", "subject_id"]].assign(split=[split[s] for s in meta.subject_id])
    aio.write_csv_gz(out / "mimic-cxr-2.0.0-split.csv.gz", sp)
    chex = pd.DataFrame(chex_rows, columns=["subject_id", "study_id", *CHEXPERT_LABELS_ALPHA])
    chex[list(CHEXPERT_LABELS_ALPHA)] = chex[list(CHEXPERT_LABELS_ALPHA)].astype("float64")
    aio.write_csv_gz(out / "mimic-cxr-2.0.0-chexpert.csv.gz", chex.sort_values(["subject_id", "study_id"]))

    large = write_large(out / "large", sizes.get("large", 0), seed, sizes.get("large_shape", (2500, 2000)))

    truth = pd.DataFrame(truth_rows).sort_values(["subject_id", "study_id", "dicom_id"], ignore_index=True)
    aio.write_parquet(out / "demo_truth.parquet", truth)
    summary = {
        "seed": seed, "n_patients": n_patients,
        "sizes": {"patients": n_patients, "studies": len(studies), "images": len(images), **sizes},
        "splits": {k: {"subjects": int(v.subject_id.nunique()), "studies": int(v.study_id.nunique()),
                       "images": int(len(v))} for k, v in truth.groupby("split")},
        "planted_phi": sorted(phi_values),
        "transfer_syntax_counts": dict(sorted(Counter(truth.transfer_syntax).items())),
        "photometric_counts": dict(sorted(Counter(truth.photometric).items())),
        "bits_stored_counts": {str(k): v for k, v in sorted(Counter(truth.bits_stored).items())},
        "view_counts": dict(sorted(Counter(truth.view).items())),
        "pairing": pairing_coverage(truth), "benchmarks": bench, "large": large,
    }
    aio.write_json(out / "demo_truth.json", summary)
    log.info("demo dataset: %d patients, %d studies, %d images in %.1f s -> %s", n_patients, len(studies),
             len(images), time.perf_counter() - t0, out)
    return summary


def write_large(root: Path, n: int, seed: int, shape: tuple[int, int] = (2500, 2000)) -> list[str]:
    """Write ``n`` big 16-bit (12 bits stored) explicit-VR DICOMs in a MIMIC tree under ``root``; returns paths."""
    rng = np.random.default_rng([seed, 2])
    paths = []
    for i in range(n):
        subj, study, did = str(int(rng.integers(10**7, 2 * 10**7))), str(int(rng.integers(5 * 10**7, 6 * 10**7))), dicom_id(rng)
        st = State(ctr=float(rng.uniform(0.4, 0.65)), eff_left=int(rng.integers(0, 3)))
        view = "PA" if i % 2 == 0 else "LATERAL"
        spec = ImageSpec(codec="explicit", photometric="MONOCHROME1" if i % 3 == 2 else "MONOCHROME2",
                         bits_stored=12 if i % 2 == 0 else 16, modality="DX", study_uid=uid_from(seed, "lstudy", study),
                         series_uid=uid_from(seed, "lseries", did), sop_uid=uid_from(seed, "lsop", did),
                         study_date="21800101", study_time="101010.500000", view_position=view, view_code=view,
                         orientation="Erect", procedure="CHEST (PA AND LAT)")
        path = study_dir(root, subj, study) / f"{did}.dcm"
        aio.write_bytes(path, dicom_bytes(render(st, view, shape[0], shape[1], rng), spec))
        paths.append(str(path.relative_to(root)))
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="alta demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="output folder (the MIMIC-CXR root)")
    ap.add_argument("--n-patients", type=int, default=150, help="MIMIC-tree patients (1-5 studies each)")
    ap.add_argument("--seed", type=int, default=0, help="random seed; identical seed gives identical bytes")
    ap.add_argument("--chexpert-per-class", type=int, default=20, help="5x200 and ConVIRT candidates per class")
    ap.add_argument("--image-queries", type=int, default=3, help="ConVIRT image queries per class")
    ap.add_argument("--rsna-test", type=int, default=120, help="RSNA test list size (~35%% positive)")
    ap.add_argument("--rsna-val", type=int, default=60, help="RSNA val list size")
    ap.add_argument("--rsna-size", type=int, default=1024, help="RSNA image side (Kaggle: 1024)")
    ap.add_argument("--large", type=int, default=0, help="also write N big 16-bit DICOMs under OUT/large/")
    ap.add_argument("--workers", type=int, default=1, help="processes writing images (same bytes for any number)")
    ap.add_argument("--config-json", help=SECTION_HELP)
    a = parse_args(ap, argv, workflow_keys=("enabled",))
    if a.n_patients < 1:
        ap.error("--n-patients must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    generate(a.out, a.n_patients, a.seed, chexpert_per_class=a.chexpert_per_class, image_queries=a.image_queries,
             rsna_test=a.rsna_test, rsna_val=a.rsna_val, rsna_size=a.rsna_size, large=a.large, workers=a.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
