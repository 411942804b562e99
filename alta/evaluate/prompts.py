"""Zero-shot prompts and prompt-set aggregation (docs/evaluation.md §2, §4.3; docs/method.md §2.10).

Contract:

* :func:`chexpert5_prompts` returns, per 5x200 class in the order Atelectasis, Cardiomegaly, Consolidation, Edema,
  Pleural Effusion, the full cross-product of the GLoRIA phrase lists (no sampling, duplicates kept): 210/15/192/18/54
  prompts. Each prompt is ``strip(a + " " + b + " " + c)`` with the class's own key order (Pleural Effusion is
  severity -> location -> subtype); with ``cleaned=True`` (default) the GLoRIA cleaning of :mod:`textclean` is
  applied, as it is before tokenisation.
* :data:`RSNA_PROMPT_SETS` / :func:`rsna_prompts`: ``alta_1x1`` (default) and ``biovil_4x4``; raw text, no cleaning.
* :func:`multilabel_prompts`: one (positive, negative) prompt pair per finding for multi-label zero-shot AUROC
  (defaults: :data:`MULTILABEL_TEMPLATE`, :data:`MULTILABEL_PHRASES`, :data:`MULTILABEL_PAIRS`); raw text.
* :func:`class_scores` turns normalised image embeddings and *unnormalised* per-prompt projections into (N, C) scores
  under one of :data:`AGGREGATIONS`; ``mean_embedding`` (the reference) is the default.
* :data:`TEXT_PROTOCOLS`: per-benchmark text handling (cleaning, pad length, truncation) for the embedding stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np

from alta.evaluate.textclean import gloria_clean

CHEXPERT5_CLASSES: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")

# GLoRIA phrase lists, verbatim (typos such as "apperance", "uppper", "presistent" included). The key order of each
# inner dict is the nesting order of the cross-product (first key outermost).
CHEXPERT_CLASS_PHRASES: dict[str, dict[str, list[str]]] = {
    "Atelectasis": {
        "severity": ["", "mild", "minimal"],
        "subtype": [
            "subsegmental atelectasis", "linear atelectasis", "trace atelectasis", "bibasilar atelectasis",
            "retrocardiac atelectasis", "bandlike atelectasis", "residual atelectasis",
        ],
        "location": [
            "at the mid lung zone", "at the upper lung zone", "at the right lung zone", "at the left lung zone",
            "at the lung bases", "at the right lung base", "at the left lung base", "at the bilateral lung bases",
            "at the left lower lobe", "at the right lower lobe",
        ],
    },
    "Cardiomegaly": {
        "severity": [""],
        "subtype": [
            "cardiac silhouette size is upper limits of normal",
            "cardiomegaly which is unchanged",
            "mildly prominent cardiac silhouette",
            "portable view of the chest demonstrates stable cardiomegaly",
            "portable view of the chest demonstrates mild cardiomegaly",
            "persistent severe cardiomegaly",
            "heart size is borderline enlarged",
            "cardiomegaly unchanged",
            "heart size is at the upper limits of normal",
            "redemonstration of cardiomegaly",
            "ap erect chest radiograph demonstrates the heart size is the upper limits of normal",
            "cardiac silhouette size is mildly enlarged",
            "mildly enlarged cardiac silhouette, likely left ventricular enlargement. other chambers are less prominent",
            "heart size remains at mildly enlarged",
            "persistent cardiomegaly with prominent upper lobe vessels",
        ],
        "location": [""],
    },
    "Consolidation": {
        "severity": ["", "increased", "improved", "apperance of"],
        "subtype": [
            "bilateral consolidation", "reticular consolidation", "retrocardiac consolidation",
            "patchy consolidation", "airspace consolidation", "partial consolidation",
        ],
        "location": [
            "at the lower lung zone", "at the upper lung zone", "at the left lower lobe", "at the right lower lobe",
            "at the left upper lobe", "at the right uppper lobe", "at the right lung base", "at the left lung base",
        ],
    },
    "Edema": {
        "severity": ["", "mild", "improvement in", "presistent", "moderate", "decreased"],
        "subtype": ["pulmonary edema", "trace interstitial edema", "pulmonary interstitial edema"],
        "location": [""],
    },
    "Pleural Effusion": {
        "severity": ["", "small", "stable", "large", "decreased", "increased"],
        "location": ["left", "right", "tiny"],
        # The duplicate is in the GLoRIA constants and stays: it double-weights "bilateral" in the mean.
        "subtype": ["bilateral pleural effusion", "subpulmonic pleural effusion", "bilateral pleural effusion"],
    },
}

EXPECTED_PROMPT_COUNTS = {"Atelectasis": 210, "Cardiomegaly": 15, "Consolidation": 192, "Edema": 18,
                          "Pleural Effusion": 54}

RSNA_PROMPT_SETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "alta_1x1": (("There is pneumonia",), ("There is no pneumonia",)),
    "biovil_4x4": (
        ("Findings consistent with pneumonia", "Findings suggesting pneumonia",
         "This opacity can represent pneumonia", "Findings are most compatible with pneumonia"),
        ("There is no pneumonia", "No evidence of pneumonia", "No evidence of acute pneumonia",
         "No signs of pneumonia"),
    ),
}

AGGREGATIONS = ("mean_embedding", "mean_cosine", "max_cosine")

# Multi-label zero-shot (CheXzero / CARZero protocol): one positive and one negative prompt per finding, p =
# softmax([s⁺, s⁻])₀. Default: the template below on the finding's phrase (the name lowercased, "_" -> " ",
# ChestX-ray14's "Effusion" -> "pleural effusion"), the sentence form of ALTA's RSNA prompts; a few findings whose
# name is not a noun phrase have their own pair. ``evaluate.multilabel_prompts`` overrides per finding.
MULTILABEL_TEMPLATE: tuple[str, str] = ("There is {finding}", "There is no {finding}")
MULTILABEL_PHRASES = {"Effusion": "pleural effusion", "Pleural Other": "other pleural abnormality"}
MULTILABEL_PAIRS = {
    "No Finding": ("There is no acute abnormality", "There is an acute abnormality"),
    "Support Devices": ("There are support devices", "There are no support devices"),
    **{name: (f"There is a {name.lower()}", f"There is no {name.lower()}")
       for name in ("Lung Lesion", "Mass", "Nodule", "Fracture", "Hernia")},
}


@dataclass(frozen=True)
class TextProtocol:
    """How one benchmark's texts are prepared before the text encoder.

    ``truncation=False`` mirrors a reference that never truncates: the embedding stage must then check that no text
    exceeds ``max_length`` tokens and fail (or log) instead of silently cutting.
    """

    clean: str  # "gloria" (textclean.gloria_clean), "none" (raw text) or "training" (the align-stage cleaner)
    max_length: int
    truncation: bool


TEXT_PROTOCOLS: dict[str, TextProtocol] = {
    # The reference pads to 256 without truncating; we truncate at 256 and log the count (docs/method.md §3 #17).
    "chexpert5x200_i2t": TextProtocol(clean="gloria", max_length=256, truncation=True),
    "chexpert5x200_zeroshot": TextProtocol(clean="gloria", max_length=128, truncation=True),
    "convirt_t2i": TextProtocol(clean="none", max_length=20, truncation=False),
    "rsna": TextProtocol(clean="none", max_length=10, truncation=False),
    "mimic_recall": TextProtocol(clean="training", max_length=128, truncation=True),
    "multilabel": TextProtocol(clean="none", max_length=20, truncation=False),
}


def _cross_product(phrases: Mapping[str, Sequence[str]]) -> list[str]:
    lists = list(phrases.values())
    if len(lists) != 3:
        raise ValueError(f"expected three phrase lists, got {len(lists)}")
    return [f"{a} {b} {c}".strip() for a, b, c in product(*lists)]


def chexpert5_prompts(cleaned: bool = True) -> dict[str, list[str]]:
    """All 5x200 zero-shot prompts per class, in class order; duplicates kept, no sampling.

    ``cleaned=True`` applies the GLoRIA cleaning (what the text encoder sees); ``False`` gives the raw strings.
    """
    out = {}
    for cls in CHEXPERT5_CLASSES:
        raw = _cross_product(CHEXPERT_CLASS_PHRASES[cls])
        out[cls] = [gloria_clean(p) for p in raw] if cleaned else raw
    return out


def rsna_prompts(name: str = "alta_1x1") -> tuple[list[str], list[str]]:
    """``(positive prompts, negative prompts)`` of the named RSNA prompt set (raw text, never cleaned)."""
    if name not in RSNA_PROMPT_SETS:
        raise ValueError(f"unknown RSNA prompt set {name!r}; choose from {sorted(RSNA_PROMPT_SETS)}")
    pos, neg = RSNA_PROMPT_SETS[name]
    return list(pos), list(neg)


def multilabel_prompts(findings: Sequence[str], overrides: Mapping[str, Sequence[str]] | None = None,
                       template: Sequence[str] = MULTILABEL_TEMPLATE) -> dict[str, tuple[str, str]]:
    """Finding -> ``(positive prompt, negative prompt)``; ``overrides`` (finding -> [pos, neg]) win over defaults."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(findings))
    if unknown:
        raise ValueError(f"multilabel_prompts names finding(s) {unknown} that are not evaluated ({list(findings)})")
    if len(template) != 2 or any("{finding}" not in t for t in template):
        raise ValueError(f"multilabel template must be two strings containing '{{finding}}', got {template!r}")
    out = {}
    for f in findings:
        if f in overrides:
            pair = overrides[f]
            if len(pair) != 2 or not all(isinstance(t, str) and t.strip() for t in pair):
                raise ValueError(f"multilabel_prompts[{f!r}] must be [positive, negative] strings, got {pair!r}")
            out[f] = (pair[0], pair[1])
        elif f in MULTILABEL_PAIRS:
            out[f] = MULTILABEL_PAIRS[f]
        else:
            phrase = MULTILABEL_PHRASES.get(f, f.replace("_", " ").lower())
            out[f] = (template[0].format(finding=phrase), template[1].format(finding=phrase))
    return out


# ------------------------------------------------------------------------------------------------- aggregation
def _l2n(x: np.ndarray, axis: int = -1) -> np.ndarray:
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    if (norm == 0).any():
        raise ValueError("cannot normalise a zero vector")
    return x / norm


def mean_embedding(prompt_proj) -> np.ndarray:
    """Prompt-set embedding: ``norm(mean_j proj_j)`` over *unnormalised* projections (n, P) -> (P,)."""
    proj = np.asarray(prompt_proj, dtype=np.float64)
    if proj.ndim != 2 or proj.shape[0] == 0:
        raise ValueError(f"prompt projections must be a non-empty (n, P) array, got shape {proj.shape}")
    return _l2n(proj.mean(axis=0))


def class_scores(img_emb, prompt_proj: Mapping[str, np.ndarray], aggregation: str = "mean_embedding") -> np.ndarray:
    """(N, C) image-class scores; columns follow the iteration order of ``prompt_proj``.

    ``img_emb``: (N, P) L2-normalised image embeddings (checked to 1e-3). ``prompt_proj``: class -> (n_c, P)
    *unnormalised* text projections of that class's prompts.

    * ``mean_embedding`` (reference, ALTA/BioViL): cos(v, norm(mean_j t_j));
    * ``mean_cosine`` (CXR-CLIP): mean_j cos(v, t_j);
    * ``max_cosine``: max_j cos(v, t_j).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose from {AGGREGATIONS}")
    v = np.asarray(img_emb, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"img_emb must be (N, P), got shape {v.shape}")
    norms = np.linalg.norm(v, axis=1)
    if v.shape[0] and np.abs(norms - 1).max() > 1e-3:
        raise ValueError(f"img_emb rows must be L2-normalised (norms range {norms.min():.4f}..{norms.max():.4f})")
    cols = []
    for cls, proj in prompt_proj.items():
        proj = np.asarray(proj, dtype=np.float64)
        if proj.ndim != 2 or proj.shape[0] == 0 or proj.shape[1] != v.shape[1]:
            raise ValueError(f"class {cls!r}: prompt projections shape {proj.shape} incompatible with {v.shape}")
        if aggregation == "mean_embedding":
            cols.append(v @ mean_embedding(proj))
        else:
            cos = v @ _l2n(proj).T
            cols.append(cos.mean(axis=1) if aggregation == "mean_cosine" else cos.max(axis=1))
    return np.stack(cols, axis=1) if cols else np.zeros((v.shape[0], 0))


def binary_prompt_scores(img_emb, pos_proj, neg_proj, aggregation: str = "mean_embedding"):
    """RSNA scores ``(s⁺, s⁻)`` of each image against the positive and negative prompt sets."""
    s = class_scores(img_emb, {"pos": pos_proj, "neg": neg_proj}, aggregation)
    return s[:, 0], s[:, 1]
