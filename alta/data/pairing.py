"""The temporal-multiview pairing rules (docs/data.md §4.3) as one pure function, :func:`build_pairs`.

Input frames (docs/architecture.md): ``images`` with image_id, subject_id, study_id, png_path, ViewPosition and, when
present, ViewCodeSequence_CodeMeaning, StudyDate, StudyTime; ``sections`` with study_id, text, text_source, n_words.
Output: :class:`PairResult` with ``pairs`` (one row per current frontal image of a study with usable text),
``dropped`` (every other image with one reason) and the per-study facts and anomaly counters that
:mod:`alta.data.coverage` turns into ``pairs_stats.json``. Invariant: ``len(images) == len(pairs) + len(dropped)``.

Drop reasons, first match wins: ``unparsable_time`` (StudyDate/StudyTime present but invalid; the image takes no
role at all), ``blank_view``, ``excluded_view:<value>``, ``lateral_view`` (laterals are never rows; they serve as
cl/pl), ``not_in_split`` (subject missing from a given split table), ``no_report_text``.
Study order uses only StudyDate + StudyTime (:mod:`alta.data.studies`); ids only break ties among equal times.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pandas as pd

from alta.data.studies import (
    DEFAULT_VIEW_ALIASES,
    StudyKey,
    hashed_split,
    id_key,
    is_earlier,
    latest_earlier,
    parse_study_date,
    parse_study_time,
    resolve_view,
    role_of,
)

log = logging.getLogger("alta.data.pair")

PAIR_COLUMNS = ["subject_id", "study_id", "dicom_id", "view_position", "split", "study_time", "time_known",
                "cf_path", "cl_path", "pf_path", "pl_path", "cl_dicom_id", "prior_study_id", "pf_dicom_id",
                "pl_dicom_id", "prior_gap_days", "prior_tie", "text", "text_source", "n_words", "cl_candidates"]
DROPPED_COLUMNS = ["image_id", "subject_id", "study_id", "reason", "detail"]
REQUIRED_IMAGE_COLUMNS = ("image_id", "subject_id", "study_id", "png_path", "ViewPosition")


@dataclass
class PairOptions:
    """Pairing options (config section ``pair``)."""

    max_prior_gap_days: float | None = None
    view_aliases: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_VIEW_ALIASES))
    val_frac: float = 0.1
    test_frac: float = 0.1
    seed: int = 0


@dataclass
class Study:
    subject_id: str
    study_id: str
    key: StudyKey = StudyKey(None, None)
    inconsistent_time: bool = False
    frontals: list[tuple[str, str]] = field(default_factory=list)  # (image_id, PA/AP), sorted by id
    laterals: list[str] = field(default_factory=list)  # image ids, sorted

    def has_view(self, view: str) -> bool:
        return any(v == view for _, v in self.frontals)


@dataclass
class PairResult:
    pairs: pd.DataFrame
    dropped: pd.DataFrame
    studies: dict[str, Study]
    subject_split: dict[str, str]
    counters: Counter


def _col(df: pd.DataFrame, name: str) -> list:
    return df[name].tolist() if name in df.columns else [None] * len(df)


def _str_or_none(v) -> str | None:
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return None
    s = str(v)
    return s if s.strip() else None


def _check_images(images: pd.DataFrame, where: str) -> None:
    missing = [c for c in REQUIRED_IMAGE_COLUMNS if c not in images.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}")
    for c in ("image_id", "subject_id", "study_id"):
        if images[c].isna().any():
            raise ValueError(f"{where}: {int(images[c].isna().sum())} row(s) with a null {c}")
    dup = images["image_id"][images["image_id"].duplicated()]
    if len(dup):
        raise ValueError(f"{where}: duplicate image_id(s) {sorted(set(dup))[:5]}")
    owners = images.groupby("study_id")["subject_id"].nunique()
    if (owners > 1).any():
        raise ValueError(f"{where}: study_id(s) under several subjects: {sorted(owners[owners > 1].index)[:5]}")


def report_texts(sections: pd.DataFrame, where: str = "sections") -> dict[str, tuple[str, str | None, int]]:
    """``study_id -> (text, text_source, n_words)`` for studies whose training text is usable (not null/blank)."""
    for c in ("study_id", "text"):
        if c not in sections.columns:
            raise ValueError(f"{where}: missing column {c!r}")
    dup = sections["study_id"][sections["study_id"].duplicated()]
    if len(dup):
        raise ValueError(f"{where}: duplicate study_id(s) {sorted(set(dup))[:5]} (one row per study expected)")
    out = {}
    for sid, text, source, n in zip(sections["study_id"], sections["text"], _col(sections, "text_source"),
                                    _col(sections, "n_words")):
        text = _str_or_none(text)
        if text is not None:
            words = int(n) if n is not None and not pd.isna(n) else len(text.split())
            out[str(sid)] = (text, _str_or_none(source), words)
    return out


def _choose_prior(cur: Study, view: str, cands: list[Study], by_id: dict[str, Study]) -> tuple[Study | None, bool]:
    """Rule 3-4: latest strictly earlier study with a frontal; ties by (same view, has lateral, smallest id)."""
    tied = latest_earlier(cur.key, [(s.key, s.study_id) for s in cands if s.frontals and s is not cur])
    if not tied:
        return None, False
    best = min(tied, key=lambda sid: (not by_id[sid].has_view(view), not by_id[sid].laterals, id_key(sid)))
    return by_id[best], len(tied) > 1


def _prior_frontal(prior: Study, view: str) -> str:
    """Rule 5: same ViewPosition if available, else the other frontal type; smallest id within the chosen type."""
    same = [i for i, v in prior.frontals if v == view]
    return min(same or [i for i, _ in prior.frontals], key=id_key)


def build_pairs(images: pd.DataFrame, sections: pd.DataFrame, split_map: dict[str, str] | None = None,
                options: PairOptions | None = None, where: str = "images",
                sections_where: str = "sections") -> PairResult:
    """Apply docs/data.md §4.3 to the image and section tables; see the module docstring for the outputs.
    ``where`` / ``sections_where`` name the inputs in error messages."""
    opt = options or PairOptions()
    _check_images(images, where)
    texts = report_texts(sections, sections_where)
    counters: Counter = Counter()
    drops: dict[str, tuple[str, str]] = {}
    studies: dict[str, Study] = {}
    per_study_keys: dict[str, list[StudyKey]] = defaultdict(list)
    info = {}  # image_id -> (subject, study, png_path, view)
    time_errors: list[str] = []

    cols = [_col(images, c) for c in ("image_id", "subject_id", "study_id", "png_path", "ViewPosition",
                                      "ViewCodeSequence_CodeMeaning", "StudyDate", "StudyTime")]
    for image_id, subj, sid, png, vp, vcs, sdate, stime in zip(*cols):
        image_id, subj, sid = str(image_id), str(subj), str(sid)
        study = studies.setdefault(sid, Study(subj, sid))
        info[image_id] = (subj, sid, _str_or_none(png))
        date, err = parse_study_date(sdate)
        tod, terr = parse_study_time(stime) if err is None else (None, None)
        if err or terr:
            drops[image_id] = ("unparsable_time", err or terr)
            time_errors.append(f"{image_id}: {err or terr}")
            continue
        per_study_keys[sid].append(StudyKey(date, tod))
        view, reason = resolve_view(vp, vcs, opt.view_aliases)
        if reason is not None:
            raw = reason.split(":", 1)[-1]
            drops[image_id] = (reason, "no ViewPosition and no ViewCodeSequence meaning" if reason == "blank_view"
                               else f"view {raw!r} is neither frontal (PA/AP) nor lateral (LATERAL/LL)")
        elif role_of(view) == "lateral":
            study.laterals.append(image_id)
            drops[image_id] = ("lateral_view", f"{view}: used as a lateral view, never a row")
        else:
            study.frontals.append((image_id, view))
    if time_errors:
        log.warning("%d image(s) with an unparsable StudyDate/StudyTime were rejected, e.g. %s", len(time_errors),
                    "; ".join(time_errors[:3]))
    counters["unparsable_time_images"] = len(time_errors)

    for sid, study in studies.items():
        study.frontals.sort(key=lambda t: id_key(t[0]))
        study.laterals.sort(key=id_key)
        keys = [k for k in per_study_keys.get(sid, []) if k.date is not None]
        if keys:
            first = min(k.date for k in keys)
            tods = [k.tod for k in keys if k.date == first and k.tod is not None]
            study.key = StudyKey(first, min(tods) if tods else None)
            # a missing time next to a known one is not a disagreement; two different dates or times are
            study.inconsistent_time = (len({k.date for k in keys}) > 1
                                       or len({k.tod for k in keys if k.tod is not None}) > 1)
        elif per_study_keys.get(sid):
            counters["studies_without_date"] += 1
    counters["studies_inconsistent_time"] = sum(s.inconsistent_time for s in studies.values())
    if counters["studies_without_date"]:
        log.warning("%d stud(ies) without StudyDate: they can neither have nor be a prior",
                    counters["studies_without_date"])
    if counters["studies_inconsistent_time"]:
        log.warning("%d stud(ies) whose images disagree on StudyDate/StudyTime: using the earliest",
                    counters["studies_inconsistent_time"])

    subjects = sorted({s.subject_id for s in studies.values()})
    if split_map is None:
        subject_split = {s: hashed_split(s, opt.val_frac, opt.test_frac, opt.seed) for s in subjects}
    else:
        subject_split = {s: split_map[s] for s in subjects if s in split_map}
    by_subject: dict[str, list[Study]] = defaultdict(list)
    for s in studies.values():
        by_subject[s.subject_id].append(s)

    rows = []
    for subj in subjects:
        cands = by_subject[subj]
        for study in sorted(cands, key=lambda s: id_key(s.study_id)):
            if not study.frontals:
                continue
            if subj not in subject_split or study.study_id not in texts:
                reason = ("not_in_split", f"subject {subj} is not in the split table") \
                    if subj not in subject_split else ("no_report_text", f"study {study.study_id} has no usable text")
                drops.update({i: reason for i, _ in study.frontals})
                continue
            rows.extend(_study_rows(study, cands, studies, texts[study.study_id], subject_split[subj], opt,
                                    info, counters))

    assert len(rows) + len(drops) == len(images), "pairing lost images"
    pairs = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    if len(pairs):
        order = sorted(range(len(rows)), key=lambda i: (rows[i]["subject_id"], rows[i]["study_time"] is None,
                                                        rows[i]["study_time"] or 0, rows[i]["study_id"],
                                                        rows[i]["dicom_id"]))
        pairs = pairs.iloc[order].reset_index(drop=True)
    dropped = pd.DataFrame(
        sorted(((i, info[i][0], info[i][1], r, d) for i, (r, d) in drops.items()), key=lambda t: (t[1], t[2], t[0])),
        columns=DROPPED_COLUMNS)
    return PairResult(pairs, dropped, studies, subject_split, counters)


def _study_rows(study: Study, cands: list[Study], studies: dict[str, Study], text: tuple, split: str,
                opt: PairOptions, info: dict, counters: Counter) -> list[dict]:
    frontal_ids = {i for i, _ in study.frontals}
    assert not frontal_ids & set(study.laterals), f"study {study.study_id}: an image is both frontal and lateral"
    cl = study.laterals[0] if study.laterals else None
    ts = study.key.timestamp()
    priors: dict[str, tuple[Study | None, bool, float | None]] = {}  # per current ViewPosition (tie rule 4.1)
    rows = []
    for image_id, view in study.frontals:
        if view not in priors:
            first = not priors  # counters are per current study, not per ViewPosition
            prior, tie = _choose_prior(study, view, cands, studies)
            gap = (ts - prior.key.timestamp()).total_seconds() / 86400 if prior is not None else None
            if prior is not None and opt.max_prior_gap_days is not None and gap > opt.max_prior_gap_days:
                counters["priors_beyond_max_gap"] += first
                prior, tie, gap = None, False, None
            skipped = [s for s in cands if not s.frontals and is_earlier(s.key, study.key)
                       and (prior is None or not is_earlier(s.key, prior.key))]
            if first:
                counters["skipped_frontalless_studies"] += len(skipped)
                counters["studies_with_skipped_frontalless"] += bool(skipped)
            priors[view] = (prior, tie, gap)
        prior, tie, gap = priors[view]
        pf = _prior_frontal(prior, view) if prior is not None else None
        pl = prior.laterals[0] if prior is not None and prior.laterals else None
        rows.append({
            "subject_id": study.subject_id, "study_id": study.study_id, "dicom_id": image_id, "view_position": view,
            "split": split, "study_time": ts, "time_known": study.key.time_known,
            "cf_path": info[image_id][2], "cl_path": info[cl][2] if cl else None,
            "pf_path": info[pf][2] if pf else None, "pl_path": info[pl][2] if pl else None,
            "cl_dicom_id": cl, "prior_study_id": prior.study_id if prior is not None else None,
            "pf_dicom_id": pf, "pl_dicom_id": pl, "prior_gap_days": gap, "prior_tie": bool(tie), "text": text[0], "text_source": text[1], "n_words": text[2],
            "cl_candidates": list(study.laterals),
        })
    return rows
