"""Stage ``extract``: chest radiographs (MIMIC-CXR DICOM tree, MIMIC-CXR-JPG tree, or a manifest CSV) -> 8-bit
rendered images, a packed training store and header/reject tables (docs/data.md §2; docs/architecture.md).

Subcommands
-----------
``alta extract shard --source {mimic,mimic_jpg,manifest} --root DIR [--manifest CSV] [--metadata CSV] --shard p10
--out results/extract [--render mimic_jpg] [--size 512] [--workers 2] [--colour luminance] [--n-shards 10]
[--png {none,sample,all}] [--png-sample 500]``
    Inputs: see :mod:`alta.data.inputs`. Outputs, in ``OUT/shards/<shard>/``: ``images.parquet`` (one row per
    kept image, schema :data:`IMAGES_SCHEMA`, sorted by subject_id, study_id, image_id), ``rejects.parquet``
    (path, reason, detail, stage), ``store.u8`` (packed uint8, :mod:`alta.data.store`: the training input),
    ``shard_stats.json``; and 8-bit inspection PNGs at ``OUT/png/<shard>/<subject_id>/<study_id>/<image_id>.png``
    (the same pixels as the store; ``png_path`` in images.parquet, null for an image without one). ``--png``
    chooses which: ``none``; ``sample`` (default): the ``--png-sample`` inputs of the shard with the smallest
    crc32(image_id), a fixed choice that does not depend on workers or order (500 per shard: every image of the
    demo, 5,000 of MIMIC-CXR's 377k); ``all``: one per kept image (what an external reader of the PNGs, such as
    the ALTA-reference CSV of ``alta pair``, needs). Invariant (asserted): files in = rows kept + rows rejected.
``alta extract merge --out results/extract [--shards p10 p11 ...]``
    Concatenates the shards into ``OUT/images.parquet``, ``OUT/rejects.parquet`` and ``OUT/extract_stats.json``
    (counts in/kept/rejected, rejects by reason, per transfer syntax, per render mode, timings); an image_id kept
    in two shards is kept once (first shard) and the later copy rejected as ``duplicate_image_id``.

Each file is decoded, rendered at native size (``--render``; JPG/PNG inputs are already 8-bit: mode ``jpg``),
resized so that its shorter side is ``--size`` (and encoded and written as PNG, when chosen) by worker processes;
the parent only appends the resized images to the store in output order, so results do not depend on worker
timing. ``shard_stats.json`` records the workers' summed per-step times and the parent's own (``parent_s``:
setup, waiting for workers, store appends, tables, publishing). Every run logs one MLflow child run.

Failures: an input-level problem (missing root, unreadable or incomplete metadata/manifest CSV) exits 2 and an
I/O error while writing (full disk, file-size limit) exits 1, each with one stderr line naming the file; SIGTERM
exits 143 after deleting this run's temporary files. No output is published unless the whole shard succeeded,
and a rerun deletes temporary files a SIGKILLed run left behind.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from alta import io, tracking
from alta.cli import SECTION_HELP, parse_args
from alta.data import dicom_header, render, store
from alta.data.inputs import SOURCES, InputError, Task, shard_tasks

log = logging.getLogger("alta.data.extract")
STAGE = "extract"

_STR, _INT, _FLOAT, _BOOL = pa.string(), pa.int64(), pa.float64(), pa.bool_()
IMAGES_SCHEMA = pa.schema([
    ("image_id", _STR), ("subject_id", _STR), ("study_id", _STR), ("shard", _STR), ("source_path", _STR),
    ("source_format", _STR), ("SOPClassUID", _STR), ("TransferSyntaxUID", _STR), ("Modality", _STR),
    ("PhotometricInterpretation", _STR), ("BitsAllocated", _INT), ("BitsStored", _INT), ("PixelRepresentation", _INT),
    ("Rows", _INT), ("Columns", _INT), ("ViewPosition", _STR), ("ViewCodeSequence_CodeMeaning", _STR),
    ("ProcedureCodeSequence_CodeMeaning", _STR), ("PatientOrientationCodeSequence_CodeMeaning", _STR),
    ("PerformedProcedureStepDescription", _STR), ("StudyDate", _STR), ("StudyTime", _STR), ("WindowCenter", _FLOAT),
    ("WindowWidth", _FLOAT), ("has_voi_lut_sequence", _BOOL), ("has_modality_lut_sequence", _BOOL),
    ("bits_masked", _BOOL), ("PresentationLUTShape", _STR), ("pixel_spacing_mm", _FLOAT), ("render_mode", _STR),
    ("png_path", _STR), ("store_file", _STR), ("store_offset", _INT), ("height", _INT), ("width", _INT)])
REJECTS_SCHEMA = pa.schema([("path", _STR), ("reason", _STR), ("detail", _STR), ("stage", _STR)])
SORT_KEYS = ["subject_id", "study_id", "image_id"]
PNG_CHOICES = ("none", "sample", "all")
PNG_SAMPLE = 500  # inspection PNGs per shard with --png sample (the demo's shards hold fewer images than this)


def png_sample_ids(tasks: list[Task], png: str, n: int = PNG_SAMPLE) -> frozenset[str] | None:
    """The image_ids that get an inspection PNG: None for all; for ``sample`` the ``n`` inputs (not rejected
    before reading) with the smallest crc32(image_id), ties by image_id: spread over subjects and studies, and the
    same whatever the worker count or task order."""
    if png == "all":
        return None
    if png == "none" or n <= 0:
        return frozenset()
    import zlib

    ids = sorted({t.image_id for t in tasks if t.reject is None}, key=lambda i: (zlib.crc32(i.encode()), i))
    return frozenset(ids[:n])


# ---------------------------------------------------------------------------------------------------------------
# per-file work (runs in worker processes)
# ---------------------------------------------------------------------------------------------------------------
def _apply_header(row: dict, task: Task) -> None:
    for key, value in task.header.items():
        if key in row and (task.header_overrides or row[key] is None):
            row[key] = value


def process_file(task: Task, cfg: dict) -> tuple[dict, np.ndarray | None, dict]:
    """Decode, render, resize and (if ``cfg["png_ids"]`` is None or holds its image_id) write the PNG of one file.

    Returns ``(row, image, meta)``: ``row`` is an images.parquet row without store fields, or a rejects row
    (``meta["kept"]`` False); ``image`` the resized uint8 array (None for a reject); ``meta`` the transfer
    syntax, colour flag and timings.
    """
    meta = {"kept": False, "syntax": None, "colour_converted": False, "t_decode": 0.0, "t_render": 0.0,
            "t_resize": 0.0, "t_write": 0.0}

    def reject(reason: str, detail: str):
        return {"path": task.source_path, "reason": reason, "detail": detail, "stage": STAGE}, None, meta

    if task.reject is not None:
        return reject(*task.reject)
    t0 = time.perf_counter()
    try:
        if task.kind == "dicom":
            ds = render.read_dicom(task.path)
            meta["syntax"] = dicom_header.transfer_syntax(ds)
            header = dicom_header.header_row(ds)
            arr, info = render.decode_pixels(ds, colour=cfg["colour"])
            t1 = time.perf_counter()
            img = render.render_image(arr, ds, cfg["render"], info)  # a Pillow image: no full-size copies
            fmt, mode = "dicom", cfg["render"]
        else:
            img, fmt, info = render.read_raster(task.path, colour=cfg["colour"], draft_short_side=cfg["size"])
            t1 = time.perf_counter()
            header = {c: None for c in dicom_header.HEADER_COLUMNS}
            header.update(Rows=info.original_shape[0], Columns=info.original_shape[1], has_voi_lut_sequence=False,
                          has_modality_lut_sequence=False)
            mode = "jpg"
    except render.Reject as rej:
        return reject(rej.reason, rej.detail)
    except Exception as exc:  # noqa: BLE001 - malformed headers raise anything; one bad file must not stop a shard
        return reject("unreadable_image", render.error_text(exc))
    t2 = time.perf_counter()
    small = render.resize_short_side(img, cfg["size"])
    t3 = time.perf_counter()
    png_ids = cfg.get("png_ids")
    png_rel = None
    if png_ids is None or task.image_id in png_ids:
        png_rel = f"png/{task.shard}/{task.subject_id}/{task.study_id}/{task.image_id}.png"
        _write_output(Path(cfg["out"]) / png_rel, render.encode_png(small))
    t4 = time.perf_counter()
    row = {"image_id": task.image_id, "subject_id": task.subject_id, "study_id": task.study_id, "shard": task.shard,
           "source_path": task.source_path, "source_format": fmt, **header, "bits_masked": info.bits_masked,
           "render_mode": mode, "png_path": png_rel, "height": small.shape[0], "width": small.shape[1]}
    _apply_header(row, task)
    meta.update(kept=True, colour_converted=info.colour_converted, notes=info.notes, t_decode=t1 - t0,
                t_render=t2 - t1, t_resize=t3 - t2, t_write=t4 - t3)
    return row, small, meta


def _write_output(path: Path, data: bytes) -> None:
    """Atomic PNG write whose OSError names the destination (a full or read-only disk stops the shard; it is not
    a per-file reject). No fsync: the PNGs are inspection copies that nothing reads back, and the flush cost more
    than the encoding; the store and the tables, which training reads, are fsynced."""
    try:
        io.write_bytes(path, data, fsync=False)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


def _remove_stale_temps(shard_dir: Path, png_dir: Path) -> None:
    """Delete temporary files a killed run left behind (alta.io names them ``.<name>.*.tmp``); they are never
    read, but a killed shard's store temp can be as large as the store."""
    stale = list(shard_dir.glob(".*.tmp")) + (list(png_dir.rglob(".*.tmp")) if png_dir.is_dir() else [])
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        log.warning("removed %d temporary file(s) left by an interrupted run in %s", len(stale), shard_dir)


def _process_chunk(tasks: list[Task], cfg: dict) -> list:
    return [process_file(t, cfg) for t in tasks]


def _results(tasks: list[Task], cfg: dict, workers: int):
    """Yield results in task order; at most a few chunks in flight, so memory stays bounded."""
    if workers <= 1 or len(tasks) <= 1:
        for t in tasks:
            yield process_file(t, cfg)
        return
    # Small chunks: a chunk is the unit of load balancing, and the last ones decide how long one worker idles at
    # the end (8 JPEG 2000 files are ~1 s); the per-chunk IPC cost (~0.2 ms) is under 1 % of one image's work.
    chunk = max(1, min(8, len(tasks) // (workers * 32)))
    chunks = [tasks[i:i + chunk] for i in range(0, len(tasks), chunk)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque = collections.deque()
        it = iter(chunks)
        for c in it:
            pending.append(pool.submit(_process_chunk, c, cfg))
            if len(pending) >= workers * 4:
                break
        while pending:
            done = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(_process_chunk, nxt, cfg))
            yield from done


def _progress(iterable, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img", disable=not sys.stderr.isatty())


# ---------------------------------------------------------------------------------------------------------------
# shard
# ---------------------------------------------------------------------------------------------------------------
def _syntax_sniff(tasks: list[Task]) -> set[str]:
    """Transfer syntaxes present (file meta only; the first 64 KiB of a gzip), for the start-up decoder check."""
    import gzip
    import io as _io

    from pydicom.filereader import _read_file_meta_info, read_preamble

    found = set()
    for t in tasks:
        if t.kind != "dicom" or t.reject is not None:
            continue
        try:
            opener = gzip.open if t.path.endswith(".gz") else open
            with opener(t.path, "rb") as fh:
                fp = _io.BytesIO(fh.read(1 << 16))
            read_preamble(fp, False)
            uid = _read_file_meta_info(fp).get("TransferSyntaxUID")
        except Exception:  # noqa: BLE001 - unreadable files are rejected later, one by one
            continue
        if uid:
            found.add(str(uid))
    return found


def run_shard(args) -> dict:
    out = Path(args.out)
    shard_dir = out / "shards" / args.shard
    _remove_stale_temps(shard_dir, out / "png" / args.shard)
    t_start = time.perf_counter()
    tasks = shard_tasks(args.source, args.root, args.shard, manifest=args.manifest, n_shards=args.n_shards,
                        metadata=args.metadata)
    unknown = render.check_decoders(_syntax_sniff(tasks))
    if unknown:
        log.warning("transfer syntaxes without any pydicom decoder (files rejected): %s", sorted(unknown))
    png = getattr(args, "png", "sample")
    png_n = getattr(args, "png_sample", PNG_SAMPLE)
    cfg = {"render": args.render, "size": args.size, "colour": args.colour, "out": str(out),
           "png_ids": png_sample_ids(tasks, png, png_n)}
    params = {"source": args.source, "root": str(args.root), "manifest": args.manifest, "shard": args.shard,
              "render": args.render, "size": args.size, "colour": args.colour, "n_shards": args.n_shards,
              "workers": args.workers, "png": png, "png_sample": png_n}
    parent = collections.Counter(setup=time.perf_counter() - t_start)  # the parent's own time, by part
    with tracking.stage_run(STAGE, params=params, out_dir=shard_dir, run_name=f"extract:{args.shard}") as run:
        t0 = time.perf_counter()
        rows, rejects = [], []
        syntaxes, modes = collections.Counter(), collections.Counter()
        timings = collections.Counter()
        n_colour = n_png = 0
        with store.StoreWriter(shard_dir / "store.u8") as writer:
            results = iter(_progress(_results(tasks, cfg, args.workers), len(tasks), f"extract {args.shard}"))
            while True:
                tw = time.perf_counter()
                item = next(results, None)
                ta = time.perf_counter()
                parent["wait_workers"] += ta - tw
                if item is None:
                    break
                row, img, meta = item
                syntaxes[meta["syntax"] or "none"] += 1
                for k in ("t_decode", "t_render", "t_resize", "t_write"):
                    timings[k] += meta[k]
                if not meta["kept"]:
                    rejects.append(row)
                    parent["rows"] += time.perf_counter() - ta
                    continue
                row.update(store_file=f"shards/{args.shard}/store.u8", store_offset=writer.append(img))
                tb = time.perf_counter()
                parent["store_append"] += tb - ta
                rows.append(row)
                modes[row["render_mode"]] += 1
                n_colour += meta["colour_converted"]
                n_png += row["png_path"] is not None
                if meta.get("notes"):
                    log.info("%s: %s", row["source_path"], "; ".join(meta["notes"]))
                parent["rows"] += time.perf_counter() - tb
            tc = time.perf_counter()
        parent["store_publish"] = time.perf_counter() - tc  # flush, fsync, rename
        tt = time.perf_counter()
        if len(tasks) != len(rows) + len(rejects):
            raise RuntimeError(f"extract {args.shard}: {len(tasks)} inputs != {len(rows)} kept + {len(rejects)} rejected")
        images = pd.DataFrame(rows, columns=IMAGES_SCHEMA.names)
        rejected = pd.DataFrame(rejects, columns=REJECTS_SCHEMA.names)
        io.write_parquet(shard_dir / "images.parquet", images, schema=IMAGES_SCHEMA)
        io.write_parquet(shard_dir / "rejects.parquet", rejected, schema=REJECTS_SCHEMA)
        parent["tables"] = time.perf_counter() - tt
        stats = {"shard": args.shard, "n_in": len(tasks), "n_kept": len(rows), "n_rejected": len(rejects),
                 "n_colour_converted": n_colour, "n_bits_masked": int(images["bits_masked"].sum()), "n_png": n_png,
                 "rejects_by_reason": dict(sorted(collections.Counter(r["reason"] for r in rejects).items())),
                 "per_transfer_syntax": dict(sorted(syntaxes.items())), "per_render_mode": dict(sorted(modes.items())),
                 "timings_s": {**{k: round(v, 3) for k, v in sorted(timings.items())},
                               "wall": round(time.perf_counter() - t0, 3)},
                 "parent_s": {k: round(v, 4) for k, v in sorted(parent.items())}}
        io.write_json(shard_dir / "shard_stats.json", stats)
        run.log_metrics({"n_in": stats["n_in"], "n_kept": stats["n_kept"], "n_rejected": stats["n_rejected"],
                         **{f"rejects.{k}": v for k, v in stats["rejects_by_reason"].items()}})
    log.info("shard %s: %d in, %d kept, %d rejected %s", args.shard, stats["n_in"], stats["n_kept"],
             stats["n_rejected"], stats["rejects_by_reason"])
    return stats


# ---------------------------------------------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------------------------------------------
def run_merge(args) -> dict:
    out = Path(args.out)
    listed = [s for item in (args.shards or []) for s in item.split(",") if s]
    shards = listed or sorted(p.name for p in (out / "shards").glob("*") if (p / "images.parquet").is_file())
    if not shards:
        raise InputError(f"{out / 'shards'}: no extracted shards to merge")
    images, rejects, stats = [], [], []
    for s in shards:
        d = out / "shards" / s
        for name in ("images.parquet", "rejects.parquet"):
            if not (d / name).is_file():
                raise InputError(f"{d / name}: shard output missing (run `alta extract shard --shard {s}` first)")
        images.append(io.read_parquet(d / "images.parquet"))
        rejects.append(io.read_parquet(d / "rejects.parquet"))
        stats.append(json.loads((d / "shard_stats.json").read_text()) if (d / "shard_stats.json").is_file() else {})
    img = pd.concat(images, ignore_index=True) if images else pd.DataFrame(columns=IMAGES_SCHEMA.names)
    rej = pd.concat(rejects, ignore_index=True)
    dup = img["image_id"].duplicated(keep="first")
    if dup.any():
        extra = pd.DataFrame({"path": img.loc[dup, "source_path"], "reason": "duplicate_image_id",
                              "detail": "image_id " + img.loc[dup, "image_id"] + " already kept in an earlier shard",
                              "stage": STAGE})
        rej = pd.concat([rej, extra], ignore_index=True)
        img = img.loc[~dup]
    img = img.sort_values(SORT_KEYS, kind="stable").reset_index(drop=True)
    n_in = sum(int(s.get("n_in", 0)) for s in stats) if all(stats) else len(img) + len(rej)
    total = {"shards": shards, "n_in": n_in, "n_kept": len(img), "n_rejected": len(rej),
             "rejects_by_reason": {str(k): int(v) for k, v in rej["reason"].value_counts().sort_index().items()},
             "per_render_mode": {str(k): int(v) for k, v in img["render_mode"].value_counts().sort_index().items()},
             "per_transfer_syntax": _sum_dicts(s.get("per_transfer_syntax", {}) for s in stats),
             "kept_per_transfer_syntax": {str(k): int(v) for k, v in
                                          img["TransferSyntaxUID"].fillna("none").value_counts().sort_index().items()},
             "n_colour_converted": sum(int(s.get("n_colour_converted", 0)) for s in stats),
             "n_bits_masked": int(img["bits_masked"].sum()),
             "n_png": sum(int(s.get("n_png", 0)) for s in stats),
             "timings_s": {**_sum_dicts((s.get("timings_s", {}) for s in stats), float),
                           "parent": _sum_dicts((s.get("parent_s", {}) for s in stats), float)}}
    if total["n_in"] != total["n_kept"] + total["n_rejected"]:
        raise RuntimeError(f"extract merge: {total['n_in']} inputs != {total['n_kept']} kept + "
                           f"{total['n_rejected']} rejected")
    with tracking.stage_run(STAGE, params={"shards": shards}, out_dir=out, run_name="extract:merge") as run:
        io.write_parquet(out / "images.parquet", img, schema=IMAGES_SCHEMA)
        io.write_parquet(out / "rejects.parquet", rej, schema=REJECTS_SCHEMA)
        io.write_json(out / "extract_stats.json", total)
        run.log_metrics({"n_in": total["n_in"], "n_kept": total["n_kept"], "n_rejected": total["n_rejected"],
                         **{f"rejects.{k}": v for k, v in total["rejects_by_reason"].items()}})
        run.log_artifact(out / "extract_stats.json")
    log.info("merged %d shards: %d in, %d kept, %d rejected", len(shards), total["n_in"], total["n_kept"],
             total["n_rejected"])
    return total


def _sum_dicts(dicts, kind=int) -> dict:
    acc: dict = collections.Counter()
    for d in dicts:
        for k, v in d.items():
            acc[k] += kind(v)
    return {k: (round(v, 3) if kind is float else v) for k, v in sorted(acc.items())}


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alta extract", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring (python -m pydoc alta.data.extract) for the table schemas.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("shard", help="extract one shard -> OUT/shards/<shard>/{images,rejects}.parquet, store.u8, "
                                     "OUT/png/<shard>/...")
    s.add_argument("--source", choices=SOURCES, required=True, help="input kind")
    s.add_argument("--root", default=".", help="input root (the folder holding files/pXX/...); for manifests unused")
    s.add_argument("--manifest", help="manifest CSV (subject_id, study_id, image_id, path, view_position, "
                                      "study_date, study_time; paths relative to its folder)")
    s.add_argument("--metadata", help="mimic-cxr-2.0.0-metadata.csv(.gz): header fields for JPGs, blank-filling "
                                      "for DICOMs (default: looked up in --root)")
    s.add_argument("--shard", required=True, help="p10..p19 (MIMIC) or m00.. (manifest)")
    s.add_argument("--out", default="results/extract", help="extract output folder")
    s.add_argument("--render", choices=render.RENDER_MODES, default="mimic_jpg", help="DICOM rendering (docs/data.md §2.2)")
    s.add_argument("--size", type=int, default=512, help="shorter side of the stored images")
    s.add_argument("--workers", type=int, default=2, help="worker processes")
    s.add_argument("--colour", choices=render.COLOUR_POLICIES, default="luminance",
                   help="colour images: convert to luminance (default) or reject")
    s.add_argument("--n-shards", type=int, default=10, help="manifest shards (crc32(subject_id) mod n)")
    s.add_argument("--png", choices=PNG_CHOICES, default="sample",
                   help="inspection PNGs (the store is the training input): none, a sample (default: the "
                        "--png-sample images of the shard with the smallest crc32(image_id)) or all")
    s.add_argument("--png-sample", type=int, default=PNG_SAMPLE,
                   help=f"PNGs per shard with --png sample (default {PNG_SAMPLE})")
    s.add_argument("--config-json", help=SECTION_HELP)
    m = sub.add_parser("merge", help="concatenate shards -> OUT/images.parquet, rejects.parquet, extract_stats.json")
    m.add_argument("--out", default="results/extract", help="extract output folder")
    m.add_argument("--shards", nargs="*", help="shards to merge, space- or comma-separated (default: all under "
                                                 "OUT/shards)")
    return p


class Terminated(BaseException):
    """SIGTERM (Slurm pre-emption, a cancelled Snakemake job): unwinds like an exception, so temporary outputs
    are deleted and the MLflow run is marked FAILED instead of the process vanishing mid-write."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    else:
        previous = None
    try:
        if args.cmd == "shard":
            if args.size < 16:
                raise InputError(f"--size {args.size} is too small")
            if args.png_sample < 0:
                raise InputError(f"--png-sample {args.png_sample} is negative")
            run_shard(args)
        else:
            run_merge(args)
    except InputError as exc:
        print(f"alta extract: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full or read-only disk: no output of this run is published
        where = exc.filename or "an output file"
        print(f"alta extract: I/O error on {where}: {exc.strerror or exc}; no complete output was written",
              file=sys.stderr)
        return 1
    except Terminated:
        print(f"alta extract: terminated by SIGTERM; no complete output was written for {args.cmd} "
              f"{getattr(args, 'shard', '') or ''}".rstrip(), file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
