"""Stage ``sections``: radiology reports -> one row per study with its sections and the training text.

Algorithm: the MIT-LCP MIMIC-CXR sectioner (MIT-LCP/mimic-cxr, txt/section_parser.py + create_section_files.py,
MIT licence), reimplemented as docs/data.md §3.2 specifies: header regex ``\\n ([A-Z ()/,-]+):\\s``; ``preamble`` before
the first header; the next-header search starts after the first newline following a header; no header -> one
``full report`` section; name normalisation (exact table, then contains-rules, then exam phrases -> findings);
empty impression/findings removed; ``last_paragraph`` fallback; conclusion = the LAST section named impression >
findings > last_paragraph > comparison. Hand-fixed studies (31 spans, 23 named sections; MIT-LCP
``custom_mimic_cxr_rules``) come from ``alta/resources/section_overrides.json`` (replace with ``--overrides``).
For an overridden study the span / named section becomes ``impression`` (``[0, 0]`` -> empty), and ``findings`` and
``last_paragraph`` are null: the hand fix replaces the automatic parse, which is known to be wrong for these reports.

Training text (docs/data.md §5), ``--text-source``:
- ``findings_impression`` (default): findings + " " + impression (the non-empty ones, in report order), else
  last_paragraph, else none;
- ``impression``: impression only; ``full_report``: the whole report (MRM faithful preset).
Cleaning: newlines -> spaces, whitespace collapsed, stripped; case, punctuation and ``___`` kept. A text needs
``--min-words`` (3) ``\\w+`` tokens, underscore-only tokens not counted.

Inputs: see :mod:`alta.data.report_readers` (MIMIC tree / zip, IU XML folder / tgz, manifest CSV).
Outputs (in ``--out``):
- ``sections.parquet``, one row per study, sorted by study_id: study_id str, subject_id str|null, report_path str,
  impression / findings / last_paragraph / comparison str|null (last occurrence, stripped), conclusion str,
  override str (none/span/name), n_sections int64, sections_json str (JSON list of [name, raw text] in report order,
  after cleanup and fallback), full_text str (the decoded report), text str|null, text_source str|null
  (findings+impression / findings / impression / last_paragraph / full_report; null when text is null),
  text_status str (ok / no_sections: none of the chosen parts exists or all are empty / too_short: under
  min-words / empty: hand-fixed study whose conclusion is empty, i.e. [0, 0]), n_words int64 (of the candidate
  text), encoding str, nul_bytes int64.
- ``rejects.parquet``: path, reason, detail, stage (reasons in :mod:`alta.data.report_readers`, plus ``duplicate_study``).
- ``sections_stats.json``: counts (inputs = kept + rejected), section-name frequencies, text_source / text_status /
  override / encoding / conclusion distributions, rejects by reason.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import sys
from collections import Counter
from importlib import resources
from pathlib import Path

import pandas as pd
import pyarrow as pa

from alta import io, tracking
from alta.cli import SECTION_HELP, parse_args
from alta.data.report_readers import SOURCES, Reject, Report, list_report_files, read_reports

__all__ = ["section_text", "normalize_section_names", "load_overrides", "parse_report", "training_text",
           "clean_text", "count_words", "build_tables", "official_view", "list_report_files", "main"]

log = logging.getLogger("alta.data.sections")

HEADER = re.compile(r"\n ([A-Z ()/,-]+):\s")
CONCLUSION_ORDER = ("impression", "findings", "last_paragraph", "comparison")
# auto: findings_impression, and where a report gives none (headerless free text: PadChest, hospital exports), the
# whole cleaned report; each study's text_source says which it got.
TEXT_SOURCES = ("findings_impression", "impression", "full_report", "auto")

# Exact-name table of MIT-LCP normalize_section_names (frequent_sections; MIT licence, MIT-LCP/mimic-cxr).
FREQUENT_SECTIONS = {
    "preamble": "preamble", "impression": "impression", "comparison": "comparison", "indication": "indication",
    "findings": "findings", "examination": "examination", "technique": "technique", "history": "history",
    "comparisons": "comparison", "clinical history": "history", "reason for examination": "indication",
    "notification": "notification", "reason for exam": "indication", "clinical information": "history",
    "exam": "examination", "clinical indication": "indication", "conclusion": "impression",
    "chest, two views": "findings", "recommendation(s)": "recommendations", "type of examination": "examination",
    "reference exam": "comparison", "patient history": "history", "addendum": "addendum",
    "comparison exam": "comparison", "date": "date", "comment": "comment", "findings and impression": "impression",
    "wet read": "wet read", "comparison film": "comparison", "recommendations": "recommendations",
    "findings/impression": "impression", "pfi": "history", "recommendation": "recommendations",
    "wetread": "wet read",
    "ndication": "impression",  # sic: the reference maps this one-off typo to impression
    "impresson": "impression", "imprression": "impression", "imoression": "impression", "impressoin": "impression",
    "imprssion": "impression", "impresion": "impression", "imperssion": "impression", "mpression": "impression",
    "impession": "impression", "findings/ impression": "impression", "finding": "findings", "findins": "findings",
    "findindgs": "findings", "findgings": "findings", "findngs": "findings", "findnings": "findings",
    "finidngs": "findings", "idication": "indication", "reference findings": "findings",
    "comparision": "comparison", "comparsion": "comparison", "comparrison": "comparison",
    "comparisions": "comparison",
}
MAIN_SECTIONS = ("impression", "findings", "history", "comparison", "addendum")
EXAM_PHRASES = ("chest", "portable", "pa and lateral", "lateral and pa", "ap and lateral", "lateral and ap",
                "frontal and", "two views", "frontal view", "pa view", "ap view", "one view", "lateral view",
                "bone window", "frontal upright", "frontal semi-upright", "ribs", "pa and lat")

SECTIONS_SCHEMA = pa.schema([
    ("study_id", pa.string()), ("subject_id", pa.string()), ("report_path", pa.string()),
    ("impression", pa.string()), ("findings", pa.string()), ("last_paragraph", pa.string()),
    ("comparison", pa.string()), ("conclusion", pa.string()), ("override", pa.string()),
    ("n_sections", pa.int64()), ("sections_json", pa.string()), ("full_text", pa.string()),
    ("text", pa.string()), ("text_source", pa.string()), ("text_status", pa.string()), ("n_words", pa.int64()),
    ("encoding", pa.string()), ("nul_bytes", pa.int64()),
])
REJECTS_SCHEMA = pa.schema([("path", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
                            ("stage", pa.string())])


# -- the MIT-LCP algorithm -----------------------------------------------------------------------------------
def normalize_section_names(names: list[str]) -> list[str]:
    """Lowercase/strip; exact table; contains impression/findings/history/comparison/addendum; exam phrase ->
    findings; else the lowercased name."""
    out = []
    for raw in names:
        s = raw.lower().strip()
        if s in FREQUENT_SECTIONS:
            out.append(FREQUENT_SECTIONS[s])
            continue
        main = next((m for m in MAIN_SECTIONS if m in s), None)
        if main is not None:
            out.append(main)
        elif any(p in s for p in EXAM_PHRASES):
            out.append("findings")
        else:
            out.append(s)
    return out


def section_text(text: str) -> tuple[list[str], list[str], list[int]]:
    """Split a report into (section texts, normalised names, start offsets), exactly as MIT-LCP ``section_text``."""
    sections, names, starts = [], [], []
    s = HEADER.search(text)
    if s is None:
        sections, names, starts = [text], ["full report"], [0]
    else:
        sections.append(text[:s.start(1)])
        names.append("preamble")
        starts.append(0)
        while s is not None:
            name, begin = s.group(1).lower(), s.end()
            newline = text.find("\n", begin)
            # the next header is searched only after the first newline following this one (no header-line hits)
            s = HEADER.search(text, newline if newline != -1 else begin)
            end = len(text) if s is None else s.start()
            sections.append(text[begin:end])
            names.append(name)
            starts.append(begin)
    names = normalize_section_names(names)
    for i in reversed(range(len(names))):  # empty impression/findings are report titles or duplicate headers
        if names[i] in ("impression", "findings") and sections[i].strip() == "":
            del sections[i], names[i], starts[i]
    if "impression" not in names and "findings" not in names and "\n \n" in sections[-1]:
        first, *rest = sections[-1].split("\n \n")
        sections[-1] = first
        sections.append("\n \n".join(rest))
        names.append("last_paragraph")
        starts.append(starts[-1] + len(first))
    return sections, names, starts


def _last(names: list[str], name: str) -> int | None:
    return max((i for i, n in enumerate(names) if n == name), default=None)


def load_overrides(path: str | Path | None = None) -> dict:
    """Override tables ``{"spans": {"s<study>": [a, b]}, "names": {"s<study>": section}}``.

    ``path`` None loads the packaged MIT-LCP table; the string ``none`` disables overrides.
    """
    if path is not None and str(path).lower() == "none":
        return {"spans": {}, "names": {}}
    try:
        if path is None:
            raw = resources.files("alta").joinpath("resources/section_overrides.json").read_text("utf-8")
        else:
            raw = Path(path).read_text("utf-8")
        doc = json.loads(raw)
        spans = {k: [int(v["span"][0]), int(v["span"][1])] for k, v in doc.get("spans", {}).items()}
        names = {k: str(v["section"]) for k, v in doc.get("names", {}).items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"{path or 'packaged section_overrides.json'}: invalid override file ({exc}); expected "
                         "{'spans': {'s<study>': {'span': [start, end]}}, 'names': {'s<study>': {'section': name}}}"
                         ) from exc
    return {"spans": spans, "names": names}


@functools.lru_cache(maxsize=1)
def _packaged_overrides() -> dict:
    return load_overrides()


def parse_report(study_id: str, text: str, overrides: dict | None = None) -> dict:
    """Section one report; return the per-study fields (impression .. conclusion, override, n_sections, sections).

    ``overrides`` None uses the packaged MIT-LCP table (as the CLI does); pass ``load_overrides("none")`` to disable.
    """
    sections, names, _ = section_text(text)
    order = {n: _last(names, n) for n in CONCLUSION_ORDER}
    picked = {n: (None if order[n] is None else sections[order[n]].strip()) for n in CONCLUSION_ORDER}
    override, key = "none", f"s{study_id}"
    overrides = _packaged_overrides() if overrides is None else overrides
    fixed = None
    if key in overrides["spans"]:
        a, b = overrides["spans"][key]
        if b > len(text):
            log.warning("study %s: override span [%d, %d] exceeds the report length %d", study_id, a, b, len(text))
        fixed, override = text[a:b].strip(), "span"
    elif key in overrides["names"]:
        i = _last(names, overrides["names"][key])
        if i is None:
            log.warning("study %s: override section %r not in the report; using the automatic parse", study_id,
                        overrides["names"][key])
        else:
            fixed, override = sections[i].strip(), "name"
    if fixed is not None:
        picked.update(impression=fixed, findings=None, last_paragraph=None)
        order = {"impression": 0, "findings": None, "last_paragraph": None, "comparison": order["comparison"]}
        conclusion = fixed
    else:
        conclusion = next((picked[n] for n in CONCLUSION_ORDER if picked[n] is not None), "")
    return {**picked, "conclusion": conclusion, "override": override, "n_sections": len(names),
            "sections": list(zip(names, sections)), "order": order}


# -- training text (docs/data.md §5) -------------------------------------------------------------------------------
def clean_text(s: str) -> str:
    """Newlines to spaces, collapse whitespace, strip; case, punctuation and ``___`` are kept."""
    return " ".join(s.split())


def count_words(s: str) -> int:
    """Number of ``\\w+`` tokens that are not underscore-only (``___`` is a de-identification placeholder)."""
    return sum(1 for t in re.findall(r"\w+", s) if t.strip("_"))


def training_text(parsed: dict, full_text: str, source: str = "findings_impression", min_words: int = 3
                  ) -> tuple[str | None, str | None, str, int]:
    """(text, text_source, text_status, n_words) for one parsed report."""
    if source not in TEXT_SOURCES:
        raise ValueError(f"unknown text source {source!r}; expected one of {', '.join(TEXT_SOURCES)}")
    if parsed["override"] != "none" and not parsed["impression"] and source != "full_report":
        return None, None, "empty", 0
    if source == "auto":
        found = training_text(parsed, full_text, "findings_impression", min_words)
        return found if found[2] != "no_sections" else training_text(parsed, full_text, "full_report", min_words)
    if source == "full_report":
        cand, label = clean_text(full_text), "full_report"
    elif source == "impression":
        cand, label = clean_text(parsed["impression"] or ""), "impression"
    else:
        present = [n for n in ("findings", "impression") if parsed[n]]
        if present:
            in_report_order = sorted(present, key=lambda n: parsed["order"][n])
            cand, label = " ".join(clean_text(parsed[n]) for n in in_report_order), "+".join(present)
        else:
            cand, label = clean_text(parsed["last_paragraph"] or ""), "last_paragraph"
    if not cand:
        return None, None, "no_sections", 0
    n = count_words(cand)
    if n < min_words:
        return None, None, "too_short", n
    return cand, label, "ok", n


# -- the table ------------------------------------------------------------------------------------------------
def build_tables(items, text_source: str = "findings_impression", min_words: int = 3, overrides: dict | None = None,
                 progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Reports/Rejects -> (sections table, rejects table, stats). Pure apart from logging."""
    from tqdm import tqdm

    rows, rejects, seen = [], [], {}
    n_inputs, names_freq, conclusion_from = 0, Counter(), Counter()
    for item in tqdm(items, desc="sections", unit="report", disable=not progress):
        n_inputs += 1
        if isinstance(item, Reject):
            rejects.append({"path": item.path, "reason": item.reason, "detail": item.detail, "stage": "sections"})
            continue
        assert isinstance(item, Report)
        if item.study_id in seen:
            rejects.append({"path": item.report_path, "reason": "duplicate_study", "stage": "sections",
                            "detail": f"study {item.study_id} was already read from {seen[item.study_id]}"})
            continue
        seen[item.study_id] = item.report_path
        p = parse_report(item.study_id, item.text, overrides)
        text, src, status, n_words = training_text(p, item.text, text_source, min_words)
        names_freq.update(n for n, _ in p["sections"])
        conclusion_from[p["override"] if p["override"] != "none" else
                        next((n for n in CONCLUSION_ORDER if p[n] is not None), "none")] += 1
        rows.append({"study_id": item.study_id, "subject_id": item.subject_id, "report_path": item.report_path,
                     **{n: p[n] for n in CONCLUSION_ORDER}, "conclusion": p["conclusion"],
                     "override": p["override"], "n_sections": p["n_sections"],
                     "sections_json": json.dumps([[n, s] for n, s in p["sections"]], ensure_ascii=False),
                     "full_text": item.text, "text": text, "text_source": src, "text_status": status,
                     "n_words": n_words, "encoding": item.encoding, "nul_bytes": item.nul_bytes})
    df = pd.DataFrame(rows, columns=SECTIONS_SCHEMA.names)
    df = df.sort_values("study_id", kind="mergesort", ignore_index=True)
    rj = pd.DataFrame(rejects, columns=REJECTS_SCHEMA.names)
    rj = rj.sort_values(["path", "reason"], kind="mergesort", ignore_index=True)
    count = lambda col: dict(sorted(Counter("null" if v is None or v != v else v for v in df[col]).items()))
    stats = {
        "inputs": n_inputs, "kept": len(df), "rejected": len(rj),
        "rejects_by_reason": dict(sorted(Counter(rj["reason"]).items())),
        "section_names": dict(sorted(names_freq.items(), key=lambda kv: (-kv[1], kv[0]))),
        "text_source": count("text_source"), "text_status": count("text_status"), "override": count("override"),
        "encoding": count("encoding"), "conclusion_from": dict(sorted(conclusion_from.items())),
        "reports_with_nul_bytes": int((df["nul_bytes"] > 0).sum()) if len(df) else 0,
        "text_n_words_mean": float(df.loc[df["text"].notna(), "n_words"].mean()) if df["text"].notna().any() else 0.0,
    }
    assert stats["inputs"] == stats["kept"] + stats["rejected"]
    return df, rj, stats


def official_view(df: pd.DataFrame) -> pd.DataFrame:
    """The official ``mimic_cxr_sectioned.csv`` (study, impression, findings, last_paragraph, comparison).

    Like the reference, hand-fixed (overridden) studies are left out.
    """
    keep = df[df["override"] == "none"]
    out = pd.DataFrame({"study": "s" + keep["study_id"].astype(str)})
    for c in CONCLUSION_ORDER:
        out[c] = keep[c].to_numpy()
    return out.reset_index(drop=True)


# -- CLI ------------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="alta sections", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Reports -> section table (MIT-LCP sectioning) and training text.\n\n"
                    "Inputs: --source mimic --root <MIMIC tree or mimic-cxr-reports.zip>; --source iu --root <folder "
                    "of IU X-ray XML or the .tgz>; --source manifest --manifest <CSV with study_id and report_text "
                    "and/or report_path> [--root <base for relative report_path>].\n"
                    "Outputs in --out: sections.parquet (one row per study), rejects.parquet (path, reason, detail, "
                    "stage), sections_stats.json.")
    ap.add_argument("--source", choices=SOURCES, required=True)
    ap.add_argument("--root", help="report tree / archive (mimic, iu) or base folder for manifest report_path")
    ap.add_argument("--manifest", help="manifest CSV (source manifest)")
    ap.add_argument("--out", default="results/sections", help="output folder (default: %(default)s)")
    ap.add_argument("--text-source", choices=TEXT_SOURCES, default="findings_impression",
                    help="training text (docs/data.md §5; default: %(default)s)")
    ap.add_argument("--overrides", default=None,
                    help="JSON of hand-fixed studies (default: packaged MIT-LCP table; 'none' disables)")
    ap.add_argument("--min-words", type=int, default=3, help="minimum \\w+ tokens, ___ excluded (default: 3)")
    ap.add_argument("--config-json", help=SECTION_HELP)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parse_args(_parser(), argv)
    try:
        if args.source == "manifest":
            if not args.manifest or not Path(args.manifest).is_file():
                raise ValueError(f"--manifest {args.manifest!r}: manifest CSV not found")
        elif not args.root:
            raise ValueError(f"--root is required for --source {args.source}")
        if args.root and not Path(args.root).exists():
            raise ValueError(f"--root {args.root!r}: report folder or archive not found")
        if args.min_words < 0:
            raise ValueError("--min-words must be >= 0")
        overrides = load_overrides(args.overrides)
    except ValueError as exc:
        print(f"alta sections: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    params = {"source": args.source, "root": args.root, "manifest": args.manifest, "text_source": args.text_source,
              "overrides": args.overrides or "packaged", "min_words": args.min_words}
    with tracking.stage_run("sections", params, out) as run:
        try:
            items = read_reports(args.source, args.root, args.manifest)
            df, rj, stats = build_tables(items, args.text_source, args.min_words, overrides,
                                         progress=sys.stderr.isatty())
        except ValueError as exc:
            print(f"alta sections: error: {exc}", file=sys.stderr)
            return 2
        stats["params"] = params
        io.write_parquet(out / "sections.parquet", df, schema=SECTIONS_SCHEMA)
        io.write_parquet(out / "rejects.parquet", rj, schema=REJECTS_SCHEMA)
        io.write_json(out / "sections_stats.json", stats)
        run.log_metrics({"inputs": stats["inputs"], "studies": stats["kept"], "rejected": stats["rejected"],
                         "text_ok": stats["text_status"].get("ok", 0), "overrides": len(df) -
                         stats["override"].get("none", 0)})
        run.log_artifact(out / "sections_stats.json")
    log.info("sections: %d inputs -> %d studies (%d with text), %d rejected", stats["inputs"], stats["kept"],
             stats["text_status"].get("ok", 0), stats["rejected"])
    no_sections = stats["text_status"].get("no_sections", 0)
    if no_sections and no_sections >= 0.5 * max(stats["kept"], 1) and args.text_source != "full_report":
        log.warning("sections: %d of %d studies have no FINDINGS/IMPRESSION text (headerless reports?) and get no "
                    "training text with text_source %s; sections.text_source: auto uses the whole report where "
                    "there are no sections (full_report: always)", no_sections, stats["kept"], args.text_source)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
