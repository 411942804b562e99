"""The model half of the pipeline (``workflow/rules/train.smk``): tokenizer -> text stand-in -> MRM -> ALTA.

Stages (each ``python -m alta.train.<stage>``, or under ``torchrun`` / ``srun`` for the two image stages):

* :mod:`alta.train.tokenizer`     — a WordPiece tokenizer trained on the training split's reports.
* :mod:`alta.train.text_pretrain` — the offline stand-in for CXR-BERT-specialized (not part of the method).
* :mod:`alta.train.mrm`           — masked record modelling pretraining (docs/method.md §1).
* :mod:`alta.train.align`         — ALTA adapter alignment (docs/method.md §2).

What they share: :mod:`alta.train.stage` (command line, config and recipe, the MLflow run, exit codes),
:mod:`alta.train.engine` (the training loop: resume, step, end of step; checkpoints), :mod:`alta.train.monitor`
(interval meters, system metrics, the loss curve), :mod:`alta.train.distributed` (torchrun / srun ranks),
:mod:`alta.train.loader` (datasets over the packed store, the study-unique batch sampler, collation) and
:mod:`alta.train.augment` (the on-device transforms).
"""
