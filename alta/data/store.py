"""Packed uint8 image store: what the training loader reads instead of decoding PNG/JPEG files.

Format (fixed; docs/architecture.md): ``store.u8`` is the raw concatenation of C-order ``uint8`` arrays of shape
``(height, width)``, with no header, padding or separators. Where each image lies is recorded elsewhere
(images.parquet: ``store_file``, ``store_offset``, ``height``, ``width``), so reading one image is a slice of a
memory map::

    mm = open_store("results/extract/shards/p10/store.u8")
    img = read_image(mm, offset, h, w)      # == mm[offset:offset + h*w].reshape(h, w), no copy, no decoding

:class:`StoreWriter` appends images sequentially and returns each one's byte offset. It writes to a temporary
file in the destination folder and renames it over the destination on :meth:`StoreWriter.close` (atomic, like
every output in alta.io); if the writer is abandoned or an exception leaves its ``with`` block, the temporary file
is deleted and an existing store is left untouched.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from alta import io


class StoreWriter:
    """Append uint8 2-D arrays to a new store file; ``close()`` publishes it atomically."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(io.atomic_path(self.path))
        self._fh = open(self._tmp, "wb")
        self._offset = 0
        self.count = 0

    def append(self, img: np.ndarray) -> int:
        """Write one image; return its byte offset in the store."""
        if img.dtype != np.uint8 or img.ndim != 2:
            raise ValueError(f"store images must be 2-D uint8, got {img.dtype} {img.shape}")
        offset = self._offset
        try:
            self._fh.write(np.ascontiguousarray(img).tobytes(order="C"))
        except OSError as exc:  # a full disk or a file-size limit: name the store, not an anonymous temp file
            raise OSError(exc.errno, exc.strerror or str(exc), str(self.path)) from exc
        self._offset += img.size
        self.count += 1
        return offset

    @property
    def nbytes(self) -> int:
        return self._offset

    def close(self) -> None:
        """Flush and atomically rename the temporary file to ``path``."""
        if self._fh.closed:
            return
        self._fh.close()
        self._stack.close()  # atomic_path fsyncs and renames

    def abort(self) -> None:
        """Discard everything written; the destination is not touched."""
        if not self._fh.closed:
            self._fh.close()
        self._stack.__exit__(RuntimeError, RuntimeError("store aborted"), None)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            with contextlib.suppress(RuntimeError):
                self.abort()


def open_store(path: str | os.PathLike) -> np.ndarray:
    """Read-only memory map of a store (an empty array for an empty store, which mmap cannot map)."""
    path = Path(path)
    if path.stat().st_size == 0:
        return np.zeros(0, np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r")


def read_image(mm: np.ndarray, offset: int, h: int, w: int) -> np.ndarray:
    """The (h, w) uint8 image at byte ``offset`` of an opened store (a view; no copy)."""
    offset, h, w = int(offset), int(h), int(w)
    end = offset + h * w
    if offset < 0 or h <= 0 or w <= 0 or end > mm.shape[0]:
        raise IndexError(f"image at offset {offset} of size {h}x{w} lies outside the store ({mm.shape[0]} bytes)")
    return mm[offset:end].reshape(h, w)
