"""Per-image and per-study facts the pairing rules need (docs/data.md §1.4, §4.1, §4.2, §4.3.8).

* :func:`resolve_view` — ViewPosition (+ ViewCodeSequence fallback, + configurable aliases) -> PA / AP / LATERAL / LL,
  or an exclusion reason ``blank_view`` / ``excluded_view:<value>``.
* :func:`parse_study_date`, :func:`parse_study_time` — MIMIC StudyDate / StudyTime (``80556.875`` = 08:05:56.875).
* :class:`StudyKey` and :func:`is_earlier` — the partial order on studies: by date, then by time of day only when
  both times are known; same-date studies with an unknown time are *not* ordered (a tie), and a study without a
  date is never ordered at all. Identifiers never enter the order.
* :func:`official_split_map`, :func:`manifest_split_map`, :func:`hashed_split` — patient-level splits.

Pure functions; no I/O except reading the split CSV in :func:`read_split_csv`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

FRONTAL = ("PA", "AP")
LATERAL = ("LATERAL", "LL")
SPLITS = ("train", "validate", "test")

# ViewCodeSequence_CodeMeaning fallback, used only when ViewPosition is blank (docs/data.md §1.4).
CODE_MEANING_VIEWS = {"postero-anterior": "PA", "antero-posterior": "AP", "lateral": "LATERAL", "left lateral": "LL"}

# Extra ViewPosition spellings of manifests (covid-chestxray-dataset: "AP Supine", "L"); matched case-insensitively.
# Configurable with `alta pair --view-alias VALUE=VIEW` / `--no-default-aliases`. None of these occur in MIMIC.
DEFAULT_VIEW_ALIASES = {"AP SUPINE": "AP", "L": "LATERAL"}

_SPLIT_ALIASES = {"train": "train", "validate": "validate", "val": "validate", "valid": "validate",
                  "validation": "validate", "test": "test"}
_TIME_RE = re.compile(r"^(\d{1,6})(?:\.(\d*))?$")


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and v != v) or v is pd.NA or (isinstance(v, str) and not v.strip())


def resolve_view(view_position, code_meaning, aliases: dict[str, str] | None = None) -> tuple[str | None, str | None]:
    """Return ``(view, None)`` with view in PA/AP/LATERAL/LL, or ``(None, reason)`` for an image in neither role.

    ``reason`` is ``blank_view`` (no ViewPosition and no usable ViewCodeSequence meaning) or ``excluded_view:<value>``
    with the raw ViewPosition (e.g. ``excluded_view:LAO``), or the raw code meaning when ViewPosition is blank.
    """
    aliases = DEFAULT_VIEW_ALIASES if aliases is None else aliases
    if not _blank(view_position):
        raw = str(view_position).strip()
        key = raw.upper()
        key = {a.upper(): v for a, v in aliases.items()}.get(key, key)
        if key in FRONTAL or key in LATERAL:
            return key, None
        return None, f"excluded_view:{raw}"
    if not _blank(code_meaning):
        raw = str(code_meaning).strip()
        view = CODE_MEANING_VIEWS.get(raw.lower())
        if view is not None:
            return view, None
        return None, f"excluded_view:{raw}"
    return None, "blank_view"


def role_of(view: str | None) -> str | None:
    """``frontal`` / ``lateral`` / None."""
    if view in FRONTAL:
        return "frontal"
    if view in LATERAL:
        return "lateral"
    return None


def parse_study_date(value) -> tuple[dt.date | None, str | None]:
    """``YYYYMMDD`` -> ``(date, None)``; blank -> ``(None, None)``; anything else -> ``(None, error)``."""
    if _blank(value):
        return None, None
    s = str(value).strip()
    if len(s) != 8 or not s.isdigit():
        return None, f"StudyDate {s!r} is not YYYYMMDD"
    try:
        return dt.date(int(s[:4]), int(s[4:6]), int(s[6:])), None
    except ValueError:
        return None, f"StudyDate {s!r} is not a calendar date"


def parse_study_time(value) -> tuple[float | None, str | None]:
    """MIMIC StudyTime -> ``(seconds since midnight, None)``; blank -> ``(None, None)``; invalid -> ``(None, error)``.

    Split at '.', left-pad the integer part to 6 digits (``80556.875`` -> 08:05:56.875), optional fraction;
    hours > 23, minutes > 59 or seconds > 59 are errors.
    """
    if _blank(value):
        return None, None
    s = str(value).strip()
    m = _TIME_RE.match(s)
    if m is None:
        return None, f"StudyTime {s!r} is not HHMMSS[.fff]"
    hms = m.group(1).zfill(6)
    hh, mm, ss = int(hms[:2]), int(hms[2:4]), int(hms[4:])
    if hh > 23 or mm > 59 or ss > 59:
        return None, f"StudyTime {s!r} out of range (hours {hh}, minutes {mm}, seconds {ss})"
    frac = float("0." + m.group(2)) if m.group(2) else 0.0
    return hh * 3600 + mm * 60 + ss + frac, None


@dataclass(frozen=True)
class StudyKey:
    """When a study happened: ``date`` (None: unknown, never ordered) and ``tod`` seconds (None: time unknown)."""

    date: dt.date | None
    tod: float | None

    @property
    def time_known(self) -> bool:
        return self.date is not None and self.tod is not None

    def timestamp(self) -> pd.Timestamp | None:
        if self.date is None:
            return None
        ts = pd.Timestamp(self.date.year, self.date.month, self.date.day)
        # whole microseconds: float seconds would give ns noise (213014.531 -> .530999999) that the us column rejects
        return ts + pd.Timedelta(microseconds=round(self.tod * 1e6)) if self.tod is not None else ts


def is_earlier(a: StudyKey, b: StudyKey) -> bool:
    """True iff study ``a`` is strictly earlier than study ``b`` (docs/data.md §4.2).

    Same date: earlier only when both times are known and differ; with one time unknown the two are a tie.
    """
    if a.date is None or b.date is None:
        return False
    if a.date != b.date:
        return a.date < b.date
    return a.tod is not None and b.tod is not None and a.tod < b.tod


def latest_earlier(current: StudyKey, candidates: list[tuple[StudyKey, str]]) -> list[str]:
    """Ids of the maximal elements among candidates strictly earlier than ``current`` (several = a tie).

    Maximal on the latest earlier date: every unknown-time study of that date, plus the known-time studies with the
    largest time of day (equal times are a tie too).
    """
    earlier = [(k, s) for k, s in candidates if is_earlier(k, current)]
    if not earlier:
        return []
    last = max(k.date for k, _ in earlier)
    on_last = [(k, s) for k, s in earlier if k.date == last]
    known = [k.tod for k, _ in on_last if k.tod is not None]
    top = max(known) if known else None
    return [s for k, s in on_last if k.tod is None or k.tod == top]


def id_key(value: str) -> tuple:
    """Deterministic order of identifiers for tie-breaks only: numeric ids numerically, then others as strings."""
    return (0, int(value), value) if value.isdigit() else (1, 0, value)


# -- splits ---------------------------------------------------------------------------------------------------------

def normalise_split(value, where: str) -> str:
    s = "" if _blank(value) else str(value).strip().lower()
    if s not in _SPLIT_ALIASES:
        raise ValueError(f"{where}: unknown split value {value!r} (expected one of {', '.join(SPLITS)})")
    return _SPLIT_ALIASES[s]


def subject_split_map(table: pd.DataFrame, where: str) -> dict[str, str]:
    """``subject_id -> split`` from a table with ``subject_id`` and ``split``; error if a subject has two splits."""
    if "subject_id" not in table.columns or "split" not in table.columns:
        raise ValueError(f"{where}: needs columns subject_id and split (has {list(table.columns)})")
    pairs = {(str(s).strip(), normalise_split(v, where)) for s, v in zip(table["subject_id"], table["split"])}
    out: dict[str, str] = {}
    bad: dict[str, set[str]] = {}
    for subj, split in sorted(pairs):
        if subj in out and out[subj] != split:
            bad.setdefault(subj, {out[subj]}).add(split)
        out.setdefault(subj, split)
    if bad:
        listed = "; ".join(f"subject {s} in {sorted(v)}" for s, v in sorted(bad.items())[:10])
        raise ValueError(f"{where}: splits must be patient-disjoint but {len(bad)} subject(s) appear in several "
                         f"splits: {listed}")
    return out


def read_split_csv(path: str | Path) -> dict[str, str]:
    """Read ``mimic-cxr-2.0.0-split.csv(.gz)`` (dicom_id, study_id, subject_id, split) into ``subject_id -> split``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"split CSV {path} does not exist")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"split CSV {path}: unreadable ({exc})") from exc
    return subject_split_map(table, f"split CSV {path}")


def hashed_split(subject_id: str, val_frac: float = 0.1, test_frac: float = 0.1, seed: int = 0) -> str:
    """Deterministic patient-level split from a stable hash of ``seed:subject_id`` (independent of the dataset)."""
    if not (0 <= val_frac and 0 <= test_frac and val_frac + test_frac <= 1):
        raise ValueError(f"split fractions must be >= 0 and sum to <= 1 (validate {val_frac}, test {test_frac})")
    digest = hashlib.sha256(f"{seed}:{subject_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < test_frac:
        return "test"
    if u < test_frac + val_frac:
        return "validate"
    return "train"
