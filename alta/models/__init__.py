"""The models of the method: MRM (masked record modelling) and ALTA (adapter alignment), docs/method.md §1, §2.

* :mod:`alta.models.presets`     — geometry presets (``tiny`` ... ``vit_base``) and the ALTA/MRM options of each mode
  (plain dataclasses, no torch: the config validator imports it before any job runs).
* :mod:`alta.models.vit`         — ViT blocks, patch embedding, random masking.
* :mod:`alta.models.pos_embed`   — the 2-D sin-cos tables (MAE and official constructions).
* :mod:`alta.models.adapters`    — the bottleneck adapters inserted into the frozen encoders.
* :mod:`alta.models.mae_decoder` — the pixel-reconstruction decoder.
* :mod:`alta.models.text`        — the BERT text encoder (CXR-BERT layout or preset-sized).
* :mod:`alta.models.losses`      — the contrastive and reconstruction losses.
* :mod:`alta.models.mrm`, :mod:`alta.models.alta` — the two models.
* :mod:`alta.models.build`       — ``build_mrm``, ``build_alta`` and the optimiser's ``param_groups``.
* :mod:`alta.models.checkpoints` — reading, writing and converting checkpoints (ours, MRM.pth, ALTA.pth).
* :mod:`alta.models.params`      — the parameter breakdown of a preset (``alta params``).
"""
