"""Atomic, deterministic file output shared by every stage.

Every stage writes through these helpers so that a killed job never leaves a file that looks complete:
data goes to a temporary file in the destination folder, is flushed and fsynced, and is then renamed over the
destination (``os.replace`` is atomic on POSIX within one filesystem). Parquet tables are written without
pandas' index and with a fixed row-group layout so that two runs with the same inputs give byte-identical files.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it to ``dest``, on error delete it.

    The temporary name starts with ``.`` and ends with ``.tmp`` so that globbing for outputs never picks it up.
    ``fsync=False`` skips flushing to stable storage before the rename: the file is still never seen half-written
    by a process, only an operating-system crash could leave it empty. Use it for derived copies nothing reads
    back (the inspection PNGs), where the flush dominates the cost.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix or ".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if fsync:
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``dest``; on success it replaces ``dest`` (an old directory is
    removed, then the new one renamed into place), on error it is deleted. For outputs that are folders (tokenizers,
    exported models): a reader never sees one half-written."""
    import shutil

    dest = Path(dest)
    tmp = dest.parent / f".{dest.name}.tmp"
    if tmp.exists():  # left by a killed run
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes(dest: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    """Atomically write ``data`` to ``dest`` (see :func:`atomic_path` for ``fsync``)."""
    with atomic_path(dest, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def write_text(dest: str | os.PathLike, text: str) -> None:
    """Atomically write UTF-8 ``text`` to ``dest``."""
    write_bytes(dest, text.encode("utf-8"))


def write_json(dest: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON (stable bytes for identical content)."""
    write_text(dest, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path,)):
        return str(o)
    if isinstance(o, pd.Timestamp):
        return o.isoformat()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_parquet(dest: str | os.PathLike, df: pd.DataFrame, schema: pa.Schema | None = None) -> None:
    """Atomically write ``df`` as Parquet: no index, zstd, no pandas metadata timestamps, deterministic bytes.

    ``schema`` (optional) fixes column types, which matters for all-null columns of an empty shard.
    """
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    # pandas metadata is deterministic, but drop it anyway: readers get types from the Arrow schema.
    table = table.replace_schema_metadata(None)
    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=1 << 20, write_statistics=True)


def read_parquet(path: str | os.PathLike) -> pd.DataFrame:
    """Read a Parquet table written by :func:`write_parquet` (nullable columns stay nullable)."""
    return pq.read_table(path).to_pandas()


def write_csv_gz(dest: str | os.PathLike, df: pd.DataFrame) -> None:
    """Atomically write a gzip CSV with a zero mtime in the gzip header, so equal tables give equal bytes."""
    raw = df.to_csv(index=False).encode("utf-8")
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
            gz.write(raw)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def config_hash(section: Any) -> str:
    """Short stable hash of a config section (key-sorted JSON), used as an MLflow tag and in checkpoints."""
    blob = json.dumps(section, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:12]
