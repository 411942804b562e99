"""Benchmark evaluation (evaluation.md): the pure layer used by the ``evaluate`` stage.

Modules:

* :mod:`alta.evaluate.textclean`  — GLoRIA text cleaning (5x200 reports and prompts).
* :mod:`alta.evaluate.prompts`    — 5x200 prompt cross-products, RSNA prompt sets, prompt-set aggregation,
  per-benchmark text protocols.
* :mod:`alta.evaluate.benchmarks` — readers/validators of the benchmark files (5x200, ConVIRT 8x200, RSNA lists,
  multi-label image lists) with file fingerprints.
* :mod:`alta.evaluate.metrics`    — P@K, R@K/MedR, zero-shot accuracy, RSNA AUROC/ACC/F1 variants, multi-label and
  one-vs-rest AUROC, mean ± sd over seeds.
* :mod:`alta.evaluate.run`        — the stage: embeds images/texts with a model and writes ``metrics/<benchmark>.json``.

Nothing here loads a model; the embedding stage passes numpy arrays in and writes the returned dicts out.
"""

from alta.evaluate.benchmarks import (
    BenchmarkError,
    ConvirtSets,
    file_fingerprint,
    read_chexpert_5x200,
    read_convirt,
    read_labelled_list,
    read_rsna_list,
)
from alta.evaluate.metrics import (
    acc_f1_at,
    auroc,
    binary_auroc,
    duplicate_positive_sets,
    multilabel_auroc,
    one_vs_rest_auroc,
    pneumonia_probability,
    precision_at_k,
    recall_at_k,
    reference_cv10,
    rsna_report,
    seed_spread,
    stable_rank_order,
    tune_threshold_f1,
    zero_shot_accuracy,
)
from alta.evaluate.prompts import (
    AGGREGATIONS,
    CHEXPERT5_CLASSES,
    TEXT_PROTOCOLS,
    binary_prompt_scores,
    chexpert5_prompts,
    class_scores,
    mean_embedding,
    multilabel_prompts,
    rsna_prompts,
)
from alta.evaluate.textclean import gloria_clean

__all__ = [
    "AGGREGATIONS", "BenchmarkError", "CHEXPERT5_CLASSES", "ConvirtSets", "TEXT_PROTOCOLS", "acc_f1_at", "auroc",
    "binary_auroc", "binary_prompt_scores", "chexpert5_prompts", "class_scores", "duplicate_positive_sets",
    "file_fingerprint", "gloria_clean", "mean_embedding", "multilabel_auroc", "multilabel_prompts",
    "one_vs_rest_auroc", "pneumonia_probability", "precision_at_k", "read_chexpert_5x200", "read_convirt",
    "read_labelled_list", "read_rsna_list", "recall_at_k", "reference_cv10", "rsna_report", "seed_spread",
    "stable_rank_order", "tune_threshold_f1", "zero_shot_accuracy",
]
