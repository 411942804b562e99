"""Training recipes: the one place where the training stages' settings get their defaults.

A *recipe* is a complete set of trainer settings for the stages ``text_pretrain``, ``mrm`` and ``align``:

* ``published`` — ALTA and MRM as the paper describes them (docs/method.md §1.5, §2.9): the ``vit_base`` preset, MRM
  batch 256 / blr 1.5e-4 / 40 warm-up of 200 epochs, ALTA batch 96 / blr 1.5e-4 / 10 warm-up, cosine laid out over
  100 epochs and stopped at 30, 75 % masking, augmentation, [CLS] pooling; ``mode: recommended`` (the reference's
  defects fixed, each behind its own ``model_options`` switch).
* ``demo`` — the embedded synthetic demo on 2 CPU cores: the ``tiny`` preset, larger learning rates and more epochs
  for models trained from scratch on ~500 images, and four small-scale switches that are *not* the published method
  (``inference_view_loss``, ``patch_grid`` / ``token_mean`` pooling, ``exclude_missing_views``), with mask ratio 0.5
  and no augmentation for ``align``. Without them the tiny demo aligns nothing (docs/results.md §1).

The workflow key ``recipe`` (top level of the config) chooses one: ``auto`` (the default) is ``demo`` while
``demo.enabled`` is true and ``published`` otherwise, so real data never inherits the demo's settings. Every key a
config section sets explicitly wins over the recipe (nested ``model_options`` / ``model_overrides`` key by key).

Contract:
- ``defaults(stage) -> dict``: the published settings of a stage, every trainer key (what ``--print-defaults`` shows).
- ``settings(stage, recipe) -> dict``: the recipe's complete settings of a stage.
- ``resolve_name(cfg) -> str``: ``published`` | ``demo`` for a workflow config.
- ``effective_section(cfg, stage) -> dict``: the section the stage runs with (recipe, then the config's own keys).
- ``differences(stage, effective) -> dict``: every result-relevant setting that differs from the published method,
  dotted key -> {"value", "published"} (``model_options.image_pooling``, ...); operational keys are left out.
- ``describe(name, diff) -> str``: the one-line summary stages log, tag in MLflow and write into the report.

No torch import: the Snakefile and ``alta config`` use this module before any job runs.
"""

from __future__ import annotations

import copy
from typing import Any

STAGES = ("text_pretrain", "mrm", "align")
RECIPES = ("published", "demo")

# Normalisation constants of the reference transforms (docs/method.md §1.2, §2.9); alta.train.augment uses
# the same values.
MRM_MEAN, MRM_STD = 0.4978, 0.2449
ALTA_MEAN, ALTA_STD = 0.4785, 0.2834

_COMMON = {
    "accum_steps": 1, "weight_decay": 0.05, "max_steps": None, "ckpt_every": 0, "eval_every_epochs": 1,
    "log_every": 10, "seed": 0, "precision": "auto", "num_workers": 2, "find_unused_parameters": False,
    "model_overrides": {}, "model_options": {},
}

_PUBLISHED: dict[str, dict[str, Any]] = {
    "mrm": {**_COMMON, "preset": "vit_base", "mode": "recommended",
            "batch_size": 256, "blr": 1.5e-4, "warmup_epochs": 40, "schedule_epochs": 200, "max_epochs": 200,
            "save_every_epochs": 0, "batch_unique_study": False, "max_length": 100,
            "text_source": "findings_impression", "split": "train", "mean": MRM_MEAN, "std": MRM_STD},
    "align": {**_COMMON, "preset": "vit_base", "mode": "recommended",
              "batch_size": 96, "blr": 1.5e-4, "warmup_epochs": 10, "schedule_epochs": 100, "max_epochs": 30,
              "save_every_epochs": 5, "batch_unique_study": True, "max_length": 128, "lateral_sampling": "first",
              "shuffle_sentences": True, "augment": True, "val_max_rows": 1000, "mean": ALTA_MEAN,
              "std": ALTA_STD},
    # The CXR-BERT stand-in is not part of the method (the paper starts from CXR-BERT-specialized); these are its
    # own defaults, and its preset follows align's so that the projection sizes agree.
    "text_pretrain": {**{k: v for k, v in _COMMON.items() if k != "model_options"}, "preset": "vit_base",
                      "batch_size": 16, "blr": 0.032, "weight_decay": 0.01, "warmup_epochs": 5,
                      "schedule_epochs": 100, "max_epochs": 100, "save_every_epochs": 0, "num_workers": 0,
                      "batch_unique_study": False, "max_length": 128, "split": "train", "dropout": 0.1,
                      "attention_dropout": None,  # None: ``dropout``
                      "init_std": 0.02, "mlm_probability": 0.15, "mlm_replace": [0.8, 0.1, 0.1],
                      "mlm_weight": 1.0, "contrastive_weight": 1.0, "min_sentence_fraction": 0.5,
                      # the step's 3B sequences run as this many encoder passes over rows of similar length
                      # (TextPretrainModel.encode): the same computation with less padding (dropout masks are
                      # drawn per pass), 1.4x faster per step (bench/results.md, text_stand_in)
                      "length_groups": 3},
}

# What the demo recipe changes, per stage (measured on the 150-patient demo; docs/results.md §1).
_DEMO: dict[str, dict[str, Any]] = {
    # text stand-in: its own 100 epochs (1,700 updates of batch 16; final view-contrast loss 1.10, chance ln 16 =
    # 2.77) with no dropout on the attention probabilities (hidden dropout stays 0.1). Held-out image->text R@5 of
    # align, seeds 0 / 1 / 2 (docs/results.md §1): this 0.288 / 0.274 / 0.274; 60 epochs without attention dropout
    # 0.233 / 0.260 / 0.192; 60 epochs with it 0.192 / 0.137 / 0.123 (both with MRM texts padded per batch).
    # Without attention dropout its step is 1.3x faster, so the 100 epochs take about what 60 did before
    # (bench/results.md, text_stand_in).
    "text_pretrain": {"preset": "tiny", "attention_dropout": 0.0},
    # tiny models from scratch on ~500 images: a larger base lr; 20 epochs (97 s cpu on one thread). At this scale
    # the MRM initialisation does not help alignment: align (batch 8, 30 epochs, seed 0) from a random image encoder
    # scored held-out image->text R@5 0.19 (RSNA AUROC 0.78), from a 50-epoch MRM 0.21 (seeds 1, 2: 0.14, 0.21).
    "mrm": {"preset": "tiny", "batch_size": 32, "blr": 0.05, "warmup_epochs": 2, "schedule_epochs": 20,
            "max_epochs": 20, "num_workers": 0},
    # with the published settings the tiny demo aligns nothing (held-out image->text R@5 at chance). Batch 8, 30
    # epochs; patch_grid pooling at blr 0.05 (lr 0.0016): a mean over the 8x8 patch grid loses where a finding is
    # (left or right effusion, heart width), and with patch_mean at blr 0.2 the global loss sat at ln 8 for ~13
    # epochs and seeds 0 / 1 / 2 scored R@5 0.137 / 0.123 / 0.192 (73 test studies, chance 0.068). This recipe:
    # 0.288 / 0.274 / 0.274 (4.2x / 4.0x / 4.0x chance; MRM baseline 0.055; docs/results.md §1).
    "align": {"preset": "tiny", "batch_size": 8, "blr": 0.05, "warmup_epochs": 3, "schedule_epochs": 30,
              "max_epochs": 30, "num_workers": 0, "augment": False, "model_overrides": {"mask_ratio": 0.5},
              "model_options": {"inference_view_loss": True, "image_pooling": "patch_grid",
                                "text_pooling": "token_mean", "exclude_missing_views": True}},
}

# Keys that change how a run is operated, not what it computes; never reported as a difference.
OPERATIONAL = {"num_workers", "log_every", "ckpt_every", "save_every_epochs", "eval_every_epochs", "val_max_rows",
               "seed", "recipe", "length_groups"}
# Keys of a workflow section that configure the job, not the trainer.
WORKFLOW_KEYS = {"weights", "nproc", "gpus", "threads", "text_dir", "enabled", "trust_weights", "seeds"}
NESTED = ("model_overrides", "model_options")
# What a stage reads (paths, and which text encoder align starts from): recorded with the settings, never a setting.
INPUTS = {"pairs", "images", "sections", "tokenizer", "mrm_weights", "text_dir", "text_encoder"}


def defaults(stage: str) -> dict[str, Any]:
    """The published settings of ``stage`` (a fresh copy)."""
    if stage not in _PUBLISHED:
        raise ValueError(f"unknown training stage {stage!r}; known: {sorted(_PUBLISHED)}")
    return copy.deepcopy(_PUBLISHED[stage])


def merge(base: dict, new: dict) -> dict:
    """``base`` with ``new`` laid over it; the nested option dicts are merged key by key."""
    out = copy.deepcopy(base)
    for k, v in new.items():
        out[k] = {**out[k], **v} if k in NESTED and isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def settings(stage: str, recipe: str) -> dict[str, Any]:
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)} (or auto)")
    return merge(defaults(stage), _DEMO[stage] if recipe == "demo" else {})


def resolve_name(cfg: dict) -> str:
    name = cfg.get("recipe", "auto") or "auto"
    if name == "auto":
        return "demo" if cfg.get("demo", {}).get("enabled", False) else "published"
    return name


def effective_section(cfg: dict, stage: str) -> dict[str, Any]:
    """The recipe's settings of ``stage`` with the config section's own keys laid over them."""
    own = dict(cfg.get(stage) or {})
    base = settings(stage, resolve_name(cfg))
    base["seed"] = cfg.get("seed", base["seed"])  # the workflow's seed, unless the section sets its own
    if stage == "text_pretrain" and "preset" not in own:
        base["preset"] = effective_section(cfg, "align")["preset"]  # projection sizes must agree with align's
    return merge(base, own)


def _flat(d: dict) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if k in NESTED and isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def differences(stage: str, effective: dict) -> dict[str, dict[str, Any]]:
    """Result-relevant settings of ``effective`` that are not the published method's (see module docstring).

    ``model_options`` / ``model_overrides`` keys are compared with the mode's and the preset's values; a missing
    published value is shown as ``None``. For ``align``, ``text_encoder`` other than ``cxr_bert`` (the stand-in or a
    random BERT instead of CXR-BERT-specialized) is a difference."""
    pub = _flat(defaults(stage))
    eff = _flat({k: v for k, v in effective.items() if k not in WORKFLOW_KEYS})
    out: dict[str, dict[str, Any]] = {}
    for k in sorted(eff):
        if k in OPERATIONAL or k in INPUTS:
            continue
        published = pub.get(k, _published_nested(k))
        if _norm(eff[k]) != _norm(published):
            out[k] = {"value": eff[k], "published": published}
    if stage == "align" and effective.get("text_encoder", "cxr_bert") != "cxr_bert":
        out["text_encoder"] = {"value": effective["text_encoder"], "published": "cxr_bert"}
    return out


def _published_nested(key: str) -> Any:
    """The published value of ``model_options.X`` (mode recommended) or ``model_overrides.X`` (vit_base)."""
    group, _, name = key.partition(".")
    if group == "model_options":
        from alta.models.presets import AltaOptions

        return AltaOptions().as_dict().get(name)
    if group == "model_overrides":
        import dataclasses

        from alta.models.presets import PRESETS

        return dataclasses.asdict(PRESETS["vit_base"]).get(name)
    return None


def _norm(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def describe(name: str, diff: dict[str, dict[str, Any]]) -> str:
    """``recipe published (no differences)`` or
    ``recipe demo; differs from the published method: k=v (published p), ...``."""
    if not diff:
        return f"recipe {name}: the published method (no differences)"
    items = ", ".join(f"{k}={d['value']!r} (published {d['published']!r})" for k, d in diff.items())
    return f"recipe {name}; differs from the published method in {len(diff)} settings: {items}"
