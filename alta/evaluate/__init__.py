"""Benchmark evaluation (docs/evaluation.md): the ``evaluate`` stage and the tools that apply a trained model.

* :mod:`alta.evaluate.run`        — the stage: scores every configured model on every benchmark and writes
  ``metrics/<model>/<benchmark>.json``, the comparison table and ``report.md``.
* :mod:`alta.evaluate.embedding`  — image and text embeddings of a checkpoint (the evaluation transform).
* :mod:`alta.evaluate.benchmarks` — readers/validators of the benchmark files (5x200, ConVIRT 8x200, RSNA lists,
  multi-label image lists) with file fingerprints.
* :mod:`alta.evaluate.prompts`    — 5x200 prompt cross-products, RSNA prompt sets, prompt-set aggregation,
  per-benchmark text protocols.
* :mod:`alta.evaluate.textclean`  — GLoRIA text cleaning (5x200 reports and prompts).
* :mod:`alta.evaluate.metrics`    — P@K, R@K/MedR, zero-shot accuracy, RSNA AUROC/ACC/F1 variants, multi-label and
  one-vs-rest AUROC, mean ± sd over seeds (pure numpy: no model is loaded here).
* :mod:`alta.evaluate.report`     — ``report.md`` and the comparison tables.
* :mod:`alta.evaluate.embed`      — ``alta embed`` / ``alta zeroshot``: apply a model to new images and texts.
* :mod:`alta.evaluate.probe`      — ``alta probe``: what the frozen towers know before and after alignment.
"""
