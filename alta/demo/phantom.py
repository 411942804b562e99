"""Chest-radiograph-like phantoms rendered from a latent :class:`alta.demo.findings.State`.

``render(state, view, height, width, rng) -> float32 (height, width)`` in [0, 1], display convention of
MONOCHROME2 (dense = bright: bone, heart, fluid; air = dark). Frontal views (PA/AP) put the patient's right on the
image left; lateral views (LATERAL/LL) put anterior on the image left and the spine on the right.

Findings are drawn large enough to survive downsampling to 224 px: heart width follows the cardiothoracic ratio,
effusions are basal opacities with a lateral meniscus (posterior costophrenic angle on the lateral), consolidation a
patchy opacity at its lobe, pneumothorax a lucent rim without lung markings plus a pleural line, edema a bilateral
perihilar haze, atelectasis a linear basal band, devices bright tubes/lines, fracture a rib step with callus.

Rendering happens on a coarse grid (longer side ``WORK``) and is upsampled with Pillow; fine noise is added at
native size. Everything is float32 numpy, vectorised per structure.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from alta.demo.findings import State

WORK = 320
# Frontal lobe centres (x: -1 image left = patient right, +1 = patient left; y: 0 top .. 1 bottom).
_LOBE_FRONTAL = {"RUL": (-0.42, 0.32), "RML": (-0.33, 0.56), "RLL": (-0.47, 0.70),
                 "LUL": (0.42, 0.33), "LLL": (0.47, 0.70)}
# Lateral lobe centres (x: -1 anterior, +1 posterior).
_LOBE_LATERAL = {"RUL": (-0.05, 0.30), "LUL": (-0.15, 0.33), "RML": (-0.35, 0.55), "RLL": (0.35, 0.66),
                 "LLL": (0.40, 0.70)}


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Band-limited noise in [-1, 1]: a small random grid upsampled bicubically."""
    small = rng.uniform(-1, 1, size=(cells, max(2, int(cells * w / h)))).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.BICUBIC), dtype=np.float32)


def _ellipse(X, Y, cx, cy, ax, ay, edge=0.08) -> np.ndarray:
    r2 = ((X - cx) / ax) ** 2 + ((Y - cy) / ay) ** 2
    return np.clip((1.0 - r2) / edge, 0.0, 1.0)


def _segments(X, Y, pts, width) -> np.ndarray:
    """Soft mask of a polyline of (x, y) points with the given half-width (normalised units)."""
    d = np.full(np.broadcast_shapes(X.shape, Y.shape), np.inf, dtype=np.float32)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        vx, vy = x1 - x0, y1 - y0
        t = np.clip(((X - x0) * vx + (Y - y0) * vy) / (vx * vx + vy * vy + 1e-9), 0, 1)
        d = np.minimum(d, np.hypot(X - x0 - t * vx, Y - y0 - t * vy))
    return np.clip(1.5 - d / width, 0.0, 1.0)


def _grid(h: int, w: int, rng: np.random.Generator):
    # Per-image pose jitter so positions are not pixel-fixed across images.
    s = rng.uniform(0.94, 1.06)
    dx, dy = rng.uniform(-0.04, 0.04), rng.uniform(-0.03, 0.03)
    aspect = w / h
    X = ((np.linspace(-1, 1, w, dtype=np.float32) * max(aspect, 0.8)) / s - dx)[None, :]
    Y = ((np.linspace(0, 1, h, dtype=np.float32) - 0.5) / s + 0.5 - dy)[:, None]
    return X.astype(np.float32), Y.astype(np.float32)


def _frontal(st: State, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    X, Y = _grid(h, w, rng)
    D = np.full((h, w), 0.06, dtype=np.float32)
    body = _ellipse(X, Y, 0.0, 0.58, 0.98, 0.66, 0.05)
    D += 0.45 * body
    # Shoulders / upper soft tissue.
    D += 0.08 * _ellipse(X, Y, 0.0, 0.05, 1.1, 0.22, 0.3)
    lungs = {}
    for side, sg in (("right", -1.0), ("left", 1.0)):
        m = _ellipse(X, Y, sg * 0.40, 0.48, 0.31, 0.37, 0.12) * np.clip((X * sg - 0.08) / 0.04, 0, 1)
        lungs[side] = m
    lung = np.maximum(lungs["left"], lungs["right"])
    markings = _smooth_noise(rng, h, w, 28)
    hil = np.exp(-(((np.abs(X) - 0.22) / 0.25) ** 2 + ((Y - 0.48) / 0.22) ** 2))
    lung_d = 0.16 + 0.05 * markings * (0.4 + hil) + 0.06 * hil
    D = D * (1 - lung) + lung_d * lung
    # Ribs: periodic bright arcs inside the thorax, and the clavicles.
    phase = (Y + 0.30 * X ** 2) / 0.085
    ribs = np.clip((np.cos(2 * np.pi * phase) - 0.55) / 0.45, 0, 1) * _ellipse(X, Y, 0, 0.5, 0.82, 0.42, 0.2)
    if st.fracture:
        sg = 1.0 if st.fracture == "left" else -1.0
        box = _ellipse(X, Y, sg * 0.62, 0.42, 0.05, 0.12, 0.3)
        shifted = np.clip((np.cos(2 * np.pi * (phase + 0.5)) - 0.55) / 0.45, 0, 1)
        ribs = ribs * (1 - box) + shifted * box * (np.abs(X - sg * 0.62) > 0.012)
        D += 0.22 * _ellipse(X, Y, sg * 0.62, 0.42, 0.045, 0.035, 0.5)  # callus
    D += 0.10 * ribs
    D += 0.18 * _segments(X, Y, [(-0.75, 0.13), (-0.12, 0.19)], 0.018)
    D += 0.18 * _segments(X, Y, [(0.75, 0.13), (0.12, 0.19)], 0.018)
    # Mediastinum + spine, then the heart (width from the cardiothoracic ratio of a ~1.5-wide thorax).
    D = np.maximum(D, 0.62 * np.clip(1.2 - np.abs(X) / 0.10, 0, 1) * np.clip((0.95 - Y) / 0.1, 0, 1))
    half = st.ctr * 1.5 / 2
    heart = _ellipse(X, Y, 0.06 + 0.35 * (half - 0.33), 0.66, half, 0.17 + 0.2 * (half - 0.33), 0.06)
    D = np.maximum(D, 0.70 * heart)
    lung = lung * (1 - heart)
    # Diaphragm below the lung bases stays at body density (already); findings follow.
    for side, sg in (("right", -1.0), ("left", 1.0)):
        size = st.eff_right if side == "right" else st.eff_left
        if size:
            hgt = (0.0, 0.09, 0.19, 0.33)[size]
            t = np.clip((X * sg - 0.10) / 0.60, 0, 1)
            level = 0.84 - hgt * (0.75 + 0.6 * t ** 2)  # meniscus: fluid climbs laterally
            space = _ellipse(X, Y, sg * 0.41, 0.50, 0.34, 0.40, 0.10) * np.clip((X * sg - 0.08) / 0.04, 0, 1)
            fluid = np.clip((Y - level) / 0.02, 0, 1) * space
            D = np.maximum(D, 0.62 * fluid)
    if st.consolidation:
        cx, cy = _LOBE_FRONTAL[st.consolidation]
        patch = _ellipse(X, Y, cx, cy, 0.20, 0.15, 0.7) * np.clip(0.75 + 0.6 * _smooth_noise(rng, h, w, 16), 0, 1)
        D += 0.42 * patch * lung
    if st.edema:
        haze = np.exp(-(((np.abs(X) - 0.2) / 0.28) ** 2 + ((Y - 0.50) / 0.22) ** 2))
        D += (0.17 * st.edema) * haze * lung * (0.8 + 0.2 * markings)
    if st.atelectasis:
        for side, sg in (("right", -1.0), ("left", 1.0)):
            if st.atelectasis in (side, "bilateral"):
                D += 0.35 * _segments(X, Y, [(sg * 0.30, 0.72), (sg * 0.64, 0.64)], 0.022) * lungs[side]
    if st.ptx_side:
        sg = 1.0 if st.ptx_side == "left" else -1.0
        k = (0.0, 0.80, 0.62)[st.ptx_size]
        # Collapsed lung anchored at the hilum: smaller ellipse shifted medially and down.
        collapsed = _ellipse(X, Y, sg * (0.40 - 0.31 * (1 - k)), 0.48 + 0.37 * (1 - k) * 0.7, 0.31 * k,
                             0.37 * k, 0.10)
        rim = np.clip(lungs[st.ptx_side] - collapsed, 0, 1)
        D = D * (1 - rim) + 0.05 * rim
        line = np.clip(1 - np.abs(collapsed - 0.5) / 0.5, 0, 1) * lungs[st.ptx_side]
        D += 0.20 * line
    devs = st.device_set
    if "ett" in devs:
        D = np.maximum(D, 0.95 * _segments(X, Y, [(0.0, -0.1), (0.0, 0.33)], 0.012))
    if "central_line" in devs:
        D = np.maximum(D, 0.92 * _segments(X, Y, [(-0.62, 0.16), (-0.30, 0.20), (-0.10, 0.27), (-0.06, 0.42)],
                                           0.010))
    if "ng_tube" in devs:
        D = np.maximum(D, 0.90 * _segments(X, Y, [(0.02, -0.1), (0.0, 0.55), (0.12, 0.86), (0.30, 0.90)], 0.010))
    if "pacemaker" in devs:
        D = np.maximum(D, 0.97 * _ellipse(X, Y, 0.55, 0.17, 0.09, 0.06, 0.3))
        D = np.maximum(D, 0.92 * _segments(X, Y, [(0.50, 0.18), (0.10, 0.30), (-0.05, 0.55), (0.10, 0.70)],
                                           0.008))
    return D


def _lateral(st: State, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    X, Y = _grid(h, w, rng)
    D = np.full((h, w), 0.06, dtype=np.float32)
    body = _ellipse(X, Y, 0.0, 0.56, 0.85, 0.64, 0.05)
    D += 0.45 * body
    lung = _ellipse(X, Y, 0.05, 0.48, 0.60, 0.38, 0.12)
    markings = _smooth_noise(rng, h, w, 24)
    D = D * (1 - lung) + (0.20 + 0.05 * markings) * lung
    # Spine (posterior, vertebral blocks) and sternum (anterior).
    blocks = 0.6 + 0.4 * (np.cos(2 * np.pi * Y / 0.07) > -0.6)
    D = np.maximum(D, 0.72 * blocks * np.clip(1 - np.abs(X - 0.68) / 0.09, 0, 1) * body)
    D = np.maximum(D, 0.55 * np.clip(1 - np.abs(X + 0.70) / 0.04, 0, 1) * (Y > 0.2) * (Y < 0.75))
    scale = st.ctr / 0.44
    heart = _ellipse(X, Y, -0.30 + 0.12 * (scale - 1), 0.66, 0.27 * scale, 0.19 * scale ** 0.5, 0.06)
    D = np.maximum(D, 0.68 * heart)
    total = st.eff_left + st.eff_right
    if total:
        hgt = (0.0, 0.08, 0.16, 0.26, 0.30, 0.34, 0.38)[total]
        t = np.clip((X + 0.1) / 0.7, 0, 1)
        level = 0.86 - hgt * (0.4 + 1.0 * t ** 2)  # posterior costophrenic angle fills first
        space = _ellipse(X, Y, 0.05, 0.50, 0.63, 0.41, 0.10)
        fluid = np.clip((Y - level) / 0.02, 0, 1) * np.clip((X + 0.25) / 0.1, 0, 1) * space
        D = np.maximum(D, 0.58 * fluid)
    if st.consolidation:
        cx, cy = _LOBE_LATERAL[st.consolidation]
        patch = _ellipse(X, Y, cx, cy, 0.22, 0.15, 0.7) * np.clip(0.75 + 0.6 * _smooth_noise(rng, h, w, 16), 0, 1)
        D += 0.40 * patch * lung * (1 - heart)
    if st.edema:
        haze = np.exp(-(((X - 0.05) / 0.35) ** 2 + ((Y - 0.48) / 0.22) ** 2))
        D += 0.12 * st.edema * haze * lung
    if st.atelectasis:
        D += 0.30 * _segments(X, Y, [(-0.1, 0.72), (0.40, 0.64)], 0.022) * lung
    if st.ptx_side:
        k = (0.0, 0.12, 0.22)[st.ptx_size]
        apex = np.clip((0.12 + k - Y) / 0.02, 0, 1) * lung
        D = D * (1 - apex) + 0.05 * apex
        D += 0.18 * np.clip(1 - np.abs(Y - 0.12 - k) / 0.01, 0, 1) * lung
    devs = st.device_set
    if "ett" in devs or "ng_tube" in devs:
        D = np.maximum(D, 0.93 * _segments(X, Y, [(0.25, -0.1), (0.20, 0.34)], 0.012))
    if "central_line" in devs:
        D = np.maximum(D, 0.9 * _segments(X, Y, [(0.0, 0.12), (-0.05, 0.28), (-0.08, 0.45)], 0.010))
    if "pacemaker" in devs:
        D = np.maximum(D, 0.97 * _ellipse(X, Y, -0.55, 0.20, 0.08, 0.05, 0.3))
    return D


def render(state: State, view: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Render one image of ``state`` in ``view`` (PA, AP, LATERAL, LL) at native ``height`` x ``width``."""
    scale = WORK / max(height, width)
    h, w = max(32, round(height * scale)), max(32, round(width * scale))
    if view in ("LATERAL", "LL"):
        D = _lateral(state, h, w, rng)
    elif view in ("PA", "AP"):
        D = _frontal(state, h, w, rng)
        if view == "AP":
            D = D * 0.92 + 0.05  # portable AP: lower contrast
    else:
        raise ValueError(f"unknown view {view!r}")
    D = D * float(rng.uniform(0.9, 1.05)) + float(rng.uniform(-0.02, 0.03))
    big = np.array(Image.fromarray(D.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR),
                     dtype=np.float32)
    big += rng.standard_normal((height, width), dtype=np.float32) * np.float32(0.012)
    return np.clip(big, 0.0, 1.0)
