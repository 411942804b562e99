"""The data half of the pipeline (``workflow/rules/data.smk``): raw DICOMs and reports -> training tables.

Stages (each ``python -m alta.data.<stage>``), in pipeline order:

* :mod:`alta.data.extract`  — DICOM / JPG / PNG -> 8-bit images in a packed store, ``images.parquet``,
  ``rejects.parquet`` (docs/data.md §2). Its parts: :mod:`alta.data.inputs` (where the files come from: a MIMIC-CXR tree,
  MIMIC-CXR-JPG, a manifest; sharding), :mod:`alta.data.render` (pixels), :mod:`alta.data.dicom_header` (the header
  whitelist: the only header values that leave extraction), :mod:`alta.data.store` (the packed uint8 store).
* :mod:`alta.data.sections` — free-text reports -> ``sections.parquet`` (sectioning and the training text, docs/data.md
  §3, §5). Its reader of report files: :mod:`alta.data.report_readers`.
* :mod:`alta.data.pair`     — images + sections -> ``pairs.parquet``: one row per current frontal image with its
  current lateral, prior frontal and prior lateral (docs/data.md §4). Its parts: :mod:`alta.data.pairing` (the rules),
  :mod:`alta.data.studies` (views, study times and their order, splits), :mod:`alta.data.coverage` (statistics and
  output schemas), :mod:`alta.data.frames` (pairing straight from a manifest or MIMIC-CXR-JPG metadata).

:mod:`alta.data.manifest` is the one contract of the generic manifest CSV that extract, sections and pair share.
"""
