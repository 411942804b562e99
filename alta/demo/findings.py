"""Latent finding state of a synthetic chest radiograph study and its evolution between a patient's studies.

The demo dataset (``alta.demo.dataset``) renders images (``alta.demo.phantom``) and writes reports (``alta.demo.reports``)
from the same :class:`State`, so image-report alignment is learnable and the temporal signal (what changed since
the prior study) is present in both modalities.

State fields (all plain values, so a state is one row of ``demo_truth.parquet``):

- ``ctr``: cardiothoracic ratio (heart width / thorax width); cardiomegaly iff ``ctr >= CARDIOMEGALY_CTR``.
- ``eff_left`` / ``eff_right``: pleural effusion size 0 none, 1 small, 2 moderate, 3 large.
- ``consolidation``: lobe of a patchy opacity (RUL, RML, RLL, LUL, LLL) or ``""``.
- ``ptx_side`` (``""``/left/right) and ``ptx_size`` (0 none, 1 small, 2 large): pneumothorax.
- ``edema``: 0 none, 1 mild, 2 moderate (bilateral perihilar haze).
- ``atelectasis``: ``""``/left/right/bilateral (linear basal band).
- ``devices``: ``|``-joined sorted subset of ``DEVICES``.
- ``fracture``: ``""``/left/right (healing rib fracture, a rib discontinuity).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

CARDIOMEGALY_CTR = 0.53
LOBES = ("RUL", "RML", "RLL", "LUL", "LLL")
DEVICES = ("central_line", "ett", "ng_tube", "pacemaker")
SIDES = ("left", "right")

# The 14 CheXpert labels in the alphabetical order of mimic-cxr-2.0.0-chexpert.csv.gz (docs/data.md §1.3).
CHEXPERT_LABELS_ALPHA = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
)
# The same labels in the CheXpert / ConVIRT column order (docs/evaluation.md §7.2).
CHEXPERT_LABELS_ORDER = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)


@dataclass(frozen=True)
class State:
    ctr: float = 0.44
    eff_left: int = 0
    eff_right: int = 0
    consolidation: str = ""
    ptx_side: str = ""
    ptx_size: int = 0
    edema: int = 0
    atelectasis: str = ""
    devices: str = ""
    fracture: str = ""

    @property
    def cardiomegaly(self) -> bool:
        return self.ctr >= CARDIOMEGALY_CTR

    @property
    def device_set(self) -> tuple[str, ...]:
        return tuple(d for d in self.devices.split("|") if d)

    def is_normal(self) -> bool:
        """No finding at all (devices count as a finding here: a normal study has no lines or tubes)."""
        return not (self.cardiomegaly or self.eff_left or self.eff_right or self.consolidation or self.ptx_side
                    or self.edema or self.atelectasis or self.devices or self.fracture)

    def as_row(self) -> dict:
        row = asdict(self)
        row["cardiomegaly"] = self.cardiomegaly
        return row


def normal_ctr(rng: np.random.Generator) -> float:
    return round(float(rng.uniform(0.40, 0.47)), 3)


def enlarged_ctr(rng: np.random.Generator) -> float:
    return round(float(rng.uniform(0.58, 0.66)), 3)


def random_initial(rng: np.random.Generator) -> State:
    """A patient's first study: about a quarter normal, otherwise a few findings."""
    if rng.random() < 0.25:
        return State(ctr=normal_ctr(rng))
    s = State(ctr=enlarged_ctr(rng) if rng.random() < 0.3 else normal_ctr(rng))
    if rng.random() < 0.3:
        side = rng.choice(["left", "right", "bilateral"], p=[0.4, 0.35, 0.25])
        size = lambda: int(rng.integers(1, 4))  # noqa: E731
        s = replace(s, eff_left=size() if side in ("left", "bilateral") else 0,
                    eff_right=size() if side in ("right", "bilateral") else 0)
    if rng.random() < 0.22:
        s = replace(s, consolidation=str(rng.choice(LOBES)))
    if rng.random() < 0.1:
        s = replace(s, ptx_side=str(rng.choice(SIDES)), ptx_size=int(rng.integers(1, 3)))
    if rng.random() < 0.18:
        s = replace(s, edema=int(rng.integers(1, 3)))
    if rng.random() < 0.2:
        s = replace(s, atelectasis=str(rng.choice(["left", "right", "bilateral"])))
    if rng.random() < 0.3:
        k = int(rng.integers(1, 3))
        s = replace(s, devices="|".join(sorted(rng.choice(DEVICES, size=k, replace=False).tolist())))
    if rng.random() < 0.05:
        s = replace(s, fracture=str(rng.choice(SIDES)))
    return s


def _step_size(rng: np.random.Generator, size: int, maximum: int) -> int:
    """Random walk of a graded finding: new / increased / decreased / resolved / unchanged."""
    u = rng.random()
    if size == 0:
        return int(rng.integers(1, maximum + 1)) if u < 0.15 else 0
    if u < 0.25:
        return min(maximum, size + 1)
    if u < 0.5:
        return size - 1
    if u < 0.6:
        return 0
    return size


def evolve(prev: State, rng: np.random.Generator) -> State:
    """Next study's state; every finding can appear, grow, shrink, resolve or stay (reports describe the change)."""
    s = prev
    if rng.random() < 0.06:
        s = replace(s, ctr=enlarged_ctr(rng) if not s.cardiomegaly else normal_ctr(rng))
    else:
        s = replace(s, ctr=round(float(np.clip(s.ctr + rng.normal(0, 0.008), 0.38, 0.68)), 3))
        if s.cardiomegaly != prev.cardiomegaly:  # small drift must not flip the label silently
            s = replace(s, ctr=prev.ctr)
    s = replace(s, eff_left=_step_size(rng, s.eff_left, 3), eff_right=_step_size(rng, s.eff_right, 3))
    u = rng.random()
    if s.consolidation:
        s = replace(s, consolidation="" if u < 0.45 else s.consolidation)
    elif u < 0.15:
        s = replace(s, consolidation=str(rng.choice(LOBES)))
    u = rng.random()
    if s.ptx_side:
        size = _step_size(rng, s.ptx_size, 2)
        s = replace(s, ptx_size=size, ptx_side=s.ptx_side if size else "")
    elif u < 0.08:
        s = replace(s, ptx_side=str(rng.choice(SIDES)), ptx_size=int(rng.integers(1, 3)))
    s = replace(s, edema=_step_size(rng, s.edema, 2))
    u = rng.random()
    if s.atelectasis:
        s = replace(s, atelectasis="" if u < 0.4 else s.atelectasis)
    elif u < 0.15:
        s = replace(s, atelectasis=str(rng.choice(["left", "right", "bilateral"])))
    devs = set(s.device_set)
    for d in DEVICES:
        if rng.random() < (0.3 if d in devs else 0.1):
            devs ^= {d}
    s = replace(s, devices="|".join(sorted(devs)))
    return s


def chexpert_labels(state: State, mentioned_negative: set[str]) -> dict[str, float | None]:
    """CheXpert-labeler-like labels of a MIMIC report: 1.0 present, 0.0 explicitly negated, None not mentioned."""
    pos = {
        "Atelectasis": bool(state.atelectasis),
        "Cardiomegaly": state.cardiomegaly,
        "Consolidation": bool(state.consolidation),
        "Edema": state.edema > 0,
        "Enlarged Cardiomediastinum": False,
        "Fracture": bool(state.fracture),
        "Lung Lesion": False,
        "Lung Opacity": bool(state.consolidation or state.edema or state.atelectasis),
        "Pleural Effusion": bool(state.eff_left or state.eff_right),
        "Pleural Other": False,
        "Pneumonia": bool(state.consolidation),
        "Pneumothorax": bool(state.ptx_side),
        "Support Devices": bool(state.devices),
    }
    # CheXpert's No Finding ignores Support Devices.
    pos["No Finding"] = not any(v for k, v in pos.items() if k != "Support Devices")
    out: dict[str, float | None] = {}
    for label in CHEXPERT_LABELS_ALPHA:
        if pos[label]:
            out[label] = 1.0
        elif label in mentioned_negative:
            out[label] = 0.0
        else:
            out[label] = None
    return out


def class_state(cls: str, rng: np.random.Generator) -> State:
    """A benchmark state positive for exactly one class and negative for every other label (docs/evaluation.md §7)."""
    base = State(ctr=normal_ctr(rng))
    side = str(rng.choice(SIDES))
    if cls == "Atelectasis":
        return replace(base, atelectasis=str(rng.choice(["left", "right", "bilateral"])))
    if cls == "Cardiomegaly":
        return replace(base, ctr=enlarged_ctr(rng))
    if cls in ("Consolidation", "Pneumonia"):
        return replace(base, consolidation=str(rng.choice(LOBES)))
    if cls == "Edema":
        return replace(base, edema=int(rng.integers(1, 3)))
    if cls == "Pleural Effusion":
        kind = rng.choice(["left", "right", "bilateral"])
        return replace(base, eff_left=int(rng.integers(1, 4)) if kind != "right" else 0,
                       eff_right=int(rng.integers(1, 4)) if kind != "left" else 0)
    if cls == "Pneumothorax":
        return replace(base, ptx_side=side, ptx_size=int(rng.integers(1, 3)))
    if cls == "Fracture":
        return replace(base, fracture=side)
    if cls == "No Finding":
        return base
    raise ValueError(f"unknown benchmark class {cls!r}")
