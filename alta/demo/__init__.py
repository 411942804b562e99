"""The embedded demo: a synthetic dataset in the exact MIMIC-CXR layout, so the whole pipeline runs offline.

* :mod:`alta.demo.dataset`         — the ``demo_data`` stage (``python -m alta.demo.dataset``): writes everything.
* :mod:`alta.demo.layout`          — patients, studies, views and dates of the dataset.
* :mod:`alta.demo.findings`        — the latent finding state of a study and how it evolves between studies.
* :mod:`alta.demo.phantom`         — chest-radiograph-like images rendered from a state.
* :mod:`alta.demo.reports`         — MIMIC-style free-text reports written from the same state.
* :mod:`alta.demo.dicom`           — DICOM Part-10 files in six transfer syntaxes (with planted PHI).
* :mod:`alta.demo.benchmark_files` — CheXpert 5x200, ConVIRT, RSNA and multi-label benchmark files of held-out
  patients.
"""
