"""Patients, studies and images of the demo MIMIC-CXR tree: ids, times, views, codecs, latent states.

``plan_dataset(n_patients, rng) -> (patients, images)``: pure planning, no pixels. Each patient dict holds
``subject_id`` and its studies (``study_id``, ``date`` YYYYMMDD, ``time`` 'HHMMSS.ffffff', ``state``, ``views``);
each image dict holds the header choices (codec, photometric, bits, modality, recorded ViewPosition and
ViewCodeSequence meaning, size). Identifiers are drawn at random, so they carry no time order (docs/data.md §1.1).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from alta.demo.findings import evolve, random_initial

# (views, probability): the view sets of a study.
VIEW_SETS = [
    (("PA", "LATERAL"), 0.42), (("AP",), 0.22), (("PA",), 0.07), (("AP", "LATERAL"), 0.07),
    (("LATERAL",), 0.04), (("PA", "LL"), 0.06), (("PA", "PA", "LATERAL"), 0.05), (("AP", "AP"), 0.03),
    (("PA", "LATERAL", "LATERAL"), 0.04),
]
CODEC_WEIGHTS = {"explicit": 0.38, "implicit": 0.18, "jpeg_baseline": 0.24, "j2k": 0.06, "j2k_lossy": 0.08,
                 "rle": 0.06}
MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}
MIN_PER_KIND = 3


def dicom_id(rng: np.random.Generator) -> str:
    return "-".join(f"{int(v):08x}" for v in rng.integers(0, 1 << 32, size=5, dtype=np.uint64))


def unique_ints(rng: np.random.Generator, n: int, lo: int, hi: int) -> list[int]:
    out: list[int] = []
    seen: set[int] = set()
    while len(out) < n:
        v = int(rng.integers(lo, hi))
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def procedure_for(views: tuple[str, ...]) -> str:
    if views == ("AP",) or views == ("AP", "AP"):
        return "CHEST (PORTABLE AP)"
    if len(views) == 1:
        return "CHEST (SINGLE VIEW)"
    return "CHEST (PA AND LAT)" if "PA" in views else "CHEST (PA AND LAT)" if "LL" in views else "CHEST (AP AND LAT)"


def _times(rng: np.random.Generator, n: int) -> list[tuple[str, str, bool]]:
    """(date, header time, tie-with-previous) per study in chronological order."""
    day0 = np.datetime64("2150-01-01") + int(rng.integers(0, 40 * 365))
    out: list[tuple[str, str, bool]] = []
    day = day0
    for i in range(n):
        u = rng.random()
        if i and u < 0.07:  # exact tie: same StudyDate and StudyTime as the previous study
            out.append((out[-1][0], out[-1][1], True))
            continue
        if i and u < 0.17:  # same day, later time
            sec = min(86399, _sec(out[-1][1]) + int(rng.integers(600, 4 * 3600)))
        else:
            if i:
                day = day + int(rng.integers(1, 400))
            sec = int(rng.integers(0, 86400))
        ms = int(rng.integers(0, 1000))
        t = f"{sec // 3600:02d}{sec // 60 % 60:02d}{sec % 60:02d}.{ms:03d}000"
        out.append((str(day).replace("-", ""), t, False))
    return out


def _sec(t: str) -> int:
    return int(t[:2]) * 3600 + int(t[2:4]) * 60 + int(t[4:6])


def mimic_float_time(t: str) -> str:
    """'080556.875000' -> '80556.875' (the metadata CSV stores StudyTime as a float, docs/data.md §1.4)."""
    return repr(float(t[:10]))


def plan_dataset(n_patients: int, rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    n_studies = rng.choice([1, 2, 3, 4, 5], size=n_patients, p=[0.25, 0.25, 0.22, 0.16, 0.12])
    subjects = unique_ints(rng, n_patients, 10_000_000, 20_000_000)
    studies = unique_ints(rng, int(n_studies.sum()), 50_000_000, 60_000_000)
    vs_p = np.array([p for _, p in VIEW_SETS])
    patients, images = [], []
    k = 0
    for subj, ns in zip(subjects, n_studies):
        pat = {"subject_id": str(subj), "studies": []}
        state = random_initial(rng)
        for i, (date, time, tie) in enumerate(_times(rng, int(ns))):
            if i:
                state = evolve(state, rng)
            views = VIEW_SETS[int(rng.choice(len(VIEW_SETS), p=vs_p / vs_p.sum()))][0]
            st = {"study_id": str(studies[k]), "date": date, "time": time, "tie": tie, "state": state,
                  "views": views, "index": i, "procedure": procedure_for(views)}
            k += 1
            for v in views:
                u = rng.random()
                blank = "vcs_only" if u < 0.05 else ("both" if u < 0.06 and len(views) > 1 else "")
                frontal = v in ("PA", "AP")
                images.append({
                    "dicom_id": dicom_id(rng), "subject_id": pat["subject_id"], "study_id": st["study_id"],
                    "view": v, "view_position": "" if blank else v, "view_meaning": "" if blank == "both"
                    else MEANING[v], "orientation": ("Erect" if v != "AP" else str(rng.choice(["Recumbent", ""])))
                    if rng.random() < 0.9 else "", "codec": str(rng.choice(list(CODEC_WEIGHTS),
                                                                           p=list(CODEC_WEIGHTS.values()))),
                    "photometric": "MONOCHROME1" if rng.random() < 0.3 else "MONOCHROME2",
                    "bits_stored": int(rng.choice([8, 12, 16], p=[0.2, 0.6, 0.2])),
                    "modality": "DX" if rng.random() < 0.7 else "CR",
                    "rows": int(rng.integers(640, 900)) if frontal else int(rng.integers(660, 900)),
                    "columns": int(rng.integers(560, 820)),
                })
            pat["studies"].append(st)
        patients.append(pat)
    _ensure_variety(images, rng)
    return patients, images


def _ensure_variety(images: list[dict], rng: np.random.Generator) -> None:
    """Every codec, photometric and bit depth appears at least MIN_PER_KIND times (deterministically)."""
    order = [int(i) for i in rng.permutation(len(images))]
    cursor = 0
    for key, values in (("codec", list(CODEC_WEIGHTS)), ("photometric", ["MONOCHROME1", "MONOCHROME2"]),
                        ("bits_stored", [8, 12, 16])):
        for val in values:
            need = MIN_PER_KIND - Counter(im[key] for im in images)[val]
            while need > 0 and cursor < len(order):
                im = images[order[cursor]]
                cursor += 1
                if key == "bits_stored" and im["codec"] == "jpeg_baseline":
                    continue
                im[key] = val
                need -= 1
    for im in images:
        if im["codec"] == "jpeg_baseline":
            im["bits_stored"] = 8
