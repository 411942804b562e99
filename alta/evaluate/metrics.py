"""Benchmark metrics (docs/evaluation.md §1–§6): numpy arrays in, plain Python numbers out.

Contract:

* Similarity matrices are ``(Q, C)`` arrays of cosine similarities (fp32 or fp64), queries in rows, candidates in
  columns. NaN similarities are rejected.
* Ranking is deterministic: a stable sort on ``(-s, candidate index)`` (:func:`stable_rank_order`), so exact ties are
  broken by candidate order (documented in every output as ``tie_break: candidate_index``).
* Class-level P@K (:func:`precision_at_k`) refuses K larger than the number of same-class candidates available to a
  query (pitfall §6.3). Instance-level R@K (:func:`recall_at_k`) uses positive sets and *pessimistic* ties.
* RSNA binary metrics treat pneumonia (label 1) as the positive class; ``ŷ_τ = 1[p > τ]`` (strict).
  Undefined precision/recall/F1 (0/0) are NaN, as in the reference, and a NaN F1 never wins a threshold search.

Every function is pure; writing ``metrics/<benchmark>.json`` and logging to MLflow is the caller's job
(``alta.evaluate.run``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

TIE_BREAK = "stable sort on (-similarity, candidate index)"
THRESHOLD_GRID = np.round(np.arange(0.0, 1.0001, 0.005), 3)  # 0, 0.005, ..., 1.000 (201 values)
CV10_LABEL = "ALTA protocol (transductive)"


def _as_scores(sim, name: str = "sim") -> np.ndarray:
    arr = np.asarray(sim)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (queries, candidates) array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN similarities ({int(np.isnan(arr).sum())} entries)")
    return arr


def stable_rank_order(scores) -> np.ndarray:
    """Candidate indices of each row, best first: stable sort on (-s, candidate index).

    ``scores``: (Q, C). Returns an int64 (Q, C) array; ``order[q, 0]`` is the best candidate of query q, and equal
    scores keep increasing candidate index.
    """
    s = _as_scores(scores, "scores")
    return np.argsort(-s, axis=1, kind="stable")


# ----------------------------------------------------------------------------------------------------------- P@K
def precision_at_k_per_query(
    sim,
    q_labels,
    c_labels,
    ks: Iterable[int] = (5, 10, 100),
    *,
    exclude_self=None,
    allow_k_above_class: bool = False,
) -> dict[int, np.ndarray]:
    """Per-query class-level precision at K: ``P@K(q) = (1/K) Σ_{c ∈ top_K(q)} 1[y(c) = y(q)]``.

    ``exclude_self``: optional (Q, C) bool mask of candidates a query must not see (e.g. the query image itself
    when the pool contains it, pitfall §6.4); masked candidates are removed before ranking.
    Raises ValueError when some K exceeds the number of same-class candidates available to a query (P@K could
    not reach 1), unless ``allow_k_above_class``; also when K exceeds the available pool.
    """
    s = _as_scores(sim)
    q_labels = np.asarray(q_labels)
    c_labels = np.asarray(c_labels)
    n_q, n_c = s.shape
    if q_labels.shape != (n_q,) or c_labels.shape != (n_c,):
        raise ValueError(f"label shapes {q_labels.shape}/{c_labels.shape} do not match sim shape {s.shape}")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    available = np.ones((n_q, n_c), dtype=bool)
    if exclude_self is not None:
        mask = np.asarray(exclude_self, dtype=bool)
        if mask.shape != s.shape:
            raise ValueError(f"exclude_self mask shape {mask.shape} != sim shape {s.shape}")
        available = ~mask
    same = q_labels[:, None] == c_labels[None, :]
    n_same = (same & available).sum(axis=1)
    n_avail = available.sum(axis=1)
    if ks[-1] > n_avail.min():
        raise ValueError(f"K={ks[-1]} exceeds the candidate pool available to a query ({int(n_avail.min())})")
    smallest = int(n_same.min())
    if ks[-1] > smallest and not allow_k_above_class:
        q_bad = int(np.argmin(n_same))
        raise ValueError(
            f"K={ks[-1]} exceeds the smallest same-class candidate count ({smallest}, query {q_bad} label "
            f"{q_labels[q_bad]!r}): P@K would be capped below 1 (docs/evaluation.md §6.3); "
            "pass allow_k_above_class=True to compute it anyway"
        )
    if exclude_self is not None:
        # Masked candidates sink below every real score; ties among them never reach the top K (K <= n_avail).
        s = np.where(available, s, -np.inf)
    order = stable_rank_order(s)[:, : ks[-1]]
    hits = np.take_along_axis(same, order, axis=1)
    cum = np.cumsum(hits, axis=1)
    return {k: cum[:, k - 1] / k for k in ks}


def precision_at_k(sim, q_labels, c_labels, ks: Iterable[int] = (5, 10, 100), **kwargs) -> dict[int, float]:
    """Mean class-level P@K over queries, ``{K: value}``; arguments as :func:`precision_at_k_per_query`."""
    per_q = precision_at_k_per_query(sim, q_labels, c_labels, ks, **kwargs)
    return {k: float(v.mean()) for k, v in per_q.items()}


# ----------------------------------------------------------------------------------------------------------- R@K
def duplicate_positive_sets(texts: Sequence[str]) -> tuple[np.ndarray, list[set[int]]]:
    """Group texts that are identical after normalisation (lowercase, collapse whitespace, strip).

    Returns ``(groups, positives)``: ``groups[i]`` is the group id of text i (ids numbered by first occurrence),
    ``positives[i] = {j : text_j ≡ text_i}``. The same sets serve I→T (image of study i, texts j) and T→I (text of
    study i, images j) because query i and candidate i belong to the same study (docs/evaluation.md §5).
    """
    first: dict[str, int] = {}
    groups = np.empty(len(texts), dtype=np.int64)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__}, not str")
        groups[i] = first.setdefault(" ".join(t.lower().split()), len(first))
    members: dict[int, set[int]] = {}
    for i, g in enumerate(groups.tolist()):
        members.setdefault(g, set()).add(i)
    return groups, [members[g] for g in groups.tolist()]


def _positive_matrix(positives, shape: tuple[int, int]) -> np.ndarray:
    if isinstance(positives, np.ndarray) and positives.ndim == 2:
        pos = positives.astype(bool)
        if pos.shape != shape:
            raise ValueError(f"positives matrix shape {pos.shape} != sim shape {shape}")
    else:
        if len(positives) != shape[0]:
            raise ValueError(f"{len(positives)} positive sets for {shape[0]} queries")
        pos = np.zeros(shape, dtype=bool)
        for i, p in enumerate(positives):
            idx = np.fromiter(p, dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= shape[1]):
                raise ValueError(f"positive set of query {i} has an index outside [0, {shape[1]})")
            pos[i, idx] = True
    empty = np.flatnonzero(~pos.any(axis=1))
    if empty.size:
        raise ValueError(f"{empty.size} queries have no positive candidate (first: query {int(empty[0])})")
    return pos


def retrieval_ranks(sim, positives) -> np.ndarray:
    """Pessimistic rank of each query's best positive: ``1 + |{j ∉ P(i) : s_ij >= s*_i}|``, ``s*_i = max_P s``.

    ``positives``: list of candidate-index sets, or a (Q, C) bool matrix. Every query needs >= 1 positive.
    """
    s = _as_scores(sim)
    pos = _positive_matrix(positives, s.shape)
    best = np.where(pos, s, -np.inf).max(axis=1)
    return 1 + ((s >= best[:, None]) & ~pos).sum(axis=1)


def recall_at_k(sim, positives, ks: Iterable[int] = (1, 5, 10, 50)) -> dict:
    """Instance-level Recall@K and median rank with pessimistic ties (docs/evaluation.md §5).

    Returns ``{"R@K": float for each K, "MedR": float, "n_queries": Q, "pool_size": C, "ties": "pessimistic"}``.
    R@K depends on the pool size: only compare values at equal ``pool_size``.
    """
    s = _as_scores(sim)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1 or ks[-1] > s.shape[1]:
        raise ValueError(f"ks {ks} must lie in [1, pool size {s.shape[1]}]")
    ranks = retrieval_ranks(s, positives)
    out: dict = {f"R@{k}": float((ranks <= k).mean()) for k in ks}
    out.update(MedR=float(np.median(ranks)), n_queries=int(s.shape[0]), pool_size=int(s.shape[1]),
               ties="pessimistic")
    return out


# ------------------------------------------------------------------------------------------------ zero-shot 5x200
def zero_shot_accuracy(sim, labels, class_names: Sequence[str] | None = None) -> dict:
    """Argmax classification from (N, C) image-class scores.

    ``np.argmax`` returns the first maximum, i.e. ties go to the earlier class (the same rule as §0).
    Returns ``{"acc", "per_class": {name: acc (NaN for an empty class)}, "confusion": C×C list (rows = true,
    columns = predicted), "class_counts": {name: n}, "n": N}``.
    """
    s = _as_scores(sim)
    labels = np.asarray(labels)
    n, c = s.shape
    if labels.shape != (n,):
        raise ValueError(f"labels shape {labels.shape} != ({n},)")
    if labels.size and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"labels must lie in [0, {c})")
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for {c} score columns")
    pred = s.argmax(axis=1)
    confusion = np.zeros((c, c), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    counts = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.diag(confusion) / counts
    return {
        "acc": float((pred == labels).mean()),
        "per_class": {nm: float(a) for nm, a in zip(names, per_class)},
        "confusion": confusion.tolist(),
        "class_counts": {nm: int(k) for nm, k in zip(names, counts)},
        "n": int(n),
    }


# ------------------------------------------------------------------------------------------------------- RSNA
def pneumonia_probability(s_pos, s_neg) -> np.ndarray:
    """``p = softmax([s⁺, s⁻])₀ = σ(s⁺ − s⁻)`` at temperature 1, computed in float64."""
    d = np.asarray(s_pos, dtype=np.float64) - np.asarray(s_neg, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-d))


def _binary(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"y {y.shape} and p {p.shape} must be equal-length 1-D arrays")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y must contain only 0/1 (pneumonia = 1)")
    if np.isnan(p).any():
        raise ValueError("p contains NaN")
    return y.astype(bool), p


def auroc(y, p) -> float:
    """``roc_auc_score(y, p)``: P(p⁺ > p⁻) + ½ P(p⁺ = p⁻). Needs both classes."""
    from sklearn.metrics import roc_auc_score

    yb, p = _binary(y, p)
    if yb.all() or not yb.any():
        raise ValueError("AUROC needs both positive and negative labels")
    return float(roc_auc_score(yb, p))


def acc_f1_at(y, p, tau: float) -> dict:
    """Binary metrics at threshold τ with ``ŷ = p > τ`` (strict); F1 of the positive class.

    Returns ``{"acc", "f1", "precision", "recall", "tp", "fp", "fn", "tn"}``; a 0/0 ratio is NaN.
    """
    yb, p = _binary(y, p)
    pred = p > tau
    tp = int(np.sum(yb & pred))
    fp = int(np.sum(~yb & pred))
    fn = int(np.sum(yb & ~pred))
    tn = int(np.sum(~yb & ~pred))
    prec = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * prec * rec / (prec + rec) if (prec + rec) > 0 else float("nan")
    return {"acc": float(np.mean(yb == pred)), "f1": float(f1), "precision": float(prec), "recall": float(rec),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def tune_threshold_f1(y, p, grid=THRESHOLD_GRID) -> tuple[float, float]:
    """τ maximising F1 over ``grid`` scanned in order; returns ``(tau, f1)``.

    First maximum wins: the best is replaced only on a strict improvement, and a NaN F1 never wins. If no grid
    value gives a finite F1, returns ``(grid[0], nan)`` (the reference starts from τ = 0).
    """
    grid = np.asarray(grid, dtype=np.float64)
    best_tau, best_f1 = float(grid[0]), float("nan")
    for tau in grid:
        f1 = acc_f1_at(y, p, float(tau))["f1"]
        if not np.isnan(f1) and (np.isnan(best_f1) or f1 > best_f1):
            best_tau, best_f1 = float(tau), f1
    return best_tau, best_f1


def reference_cv10(y, p, grid=THRESHOLD_GRID, n_splits: int = 10, random_state: int = 0) -> dict:
    """The ALTA reference threshold protocol (transductive: tunes τ on test labels; docs/evaluation.md §4.4).

    StratifiedKFold(10, shuffle=True, random_state=0) over the predictions; in each fold τ_f = F1-argmax on the nine
    training folds (:func:`tune_threshold_f1`), applied to the held-out fold. Returns the mean ACC/F1 over folds,
    the per-fold values and τ_f, and ``protocol: "ALTA protocol (transductive)"``.
    """
    from sklearn.model_selection import StratifiedKFold

    yb, p = _binary(y, p)
    skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    taus, accs, f1s = [], [], []
    for train_idx, test_idx in skf.split(p.reshape(-1, 1), yb):
        tau, _ = tune_threshold_f1(yb[train_idx], p[train_idx], grid)
        m = acc_f1_at(yb[test_idx], p[test_idx], tau)
        taus.append(tau)
        accs.append(m["acc"])
        f1s.append(m["f1"])
    return {"acc": float(np.mean(accs)), "f1": float(np.mean(f1s)), "taus": taus, "fold_acc": accs,
            "fold_f1": f1s, "protocol": CV10_LABEL, "n_splits": n_splits, "random_state": random_state}


def rsna_report(y_test, p_test, y_val=None, p_val=None) -> dict:
    """All RSNA variants of docs/evaluation.md §4.4 in one flat dict.

    Keys: ``auroc``, ``acc@0.5``, ``f1@0.5``, ``precision@0.5``, ``recall@0.5``, ``acc@val``, ``f1@val``,
    ``tau_val`` (these three are None without validation predictions), ``acc_cv10``, ``f1_cv10``, ``taus_cv10``,
    ``cv10_protocol``, ``n``, ``n_pos``, ``n_neg``, ``n_val``, ``n_val_pos``.
    """
    yb, p = _binary(y_test, p_test)
    at_half = acc_f1_at(yb, p, 0.5)
    cv = reference_cv10(yb, p)
    out = {
        "auroc": auroc(yb, p),
        "acc@0.5": at_half["acc"], "f1@0.5": at_half["f1"],
        "precision@0.5": at_half["precision"], "recall@0.5": at_half["recall"],
        "acc@val": None, "f1@val": None, "tau_val": None,
        "acc_cv10": cv["acc"], "f1_cv10": cv["f1"], "taus_cv10": cv["taus"], "cv10_protocol": cv["protocol"],
        "n": int(yb.size), "n_pos": int(yb.sum()), "n_neg": int((~yb).sum()), "n_val": None, "n_val_pos": None,
    }
    if (y_val is None) != (p_val is None):
        raise ValueError("give both y_val and p_val, or neither")
    if y_val is not None:
        yv, pv = _binary(y_val, p_val)
        tau_val, _ = tune_threshold_f1(yv, pv)
        at_val = acc_f1_at(yb, p, tau_val)
        out.update({"acc@val": at_val["acc"], "f1@val": at_val["f1"], "tau_val": tau_val,
                    "n_val": int(yv.size), "n_val_pos": int(yv.sum())})
    return out


# ------------------------------------------------------------------------------------------ AUROC, own implementation
def binary_auroc(y, s) -> float:
    """AUROC as the Mann-Whitney statistic with mid-ranks: ``(R⁺ − n⁺(n⁺+1)/2) / (n⁺ n⁻)``.

    ``R⁺`` is the sum of the (tie-averaged) ranks of the positives' scores, so a tie counts ½, as in
    ``sklearn.metrics.roc_auc_score`` (tests check the two agree). Raises ValueError without both classes.
    """
    yb, s = _binary(y, s)
    n_pos, n_neg = int(yb.sum()), int((~yb).sum())
    if not n_pos or not n_neg:
        raise ValueError("AUROC needs both positive and negative labels")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # 1-based rank of the last member of each tie group
    mid = upper - (counts - 1) / 2.0
    r_pos = float(mid[inverse][yb].sum())
    return (r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def auroc_or_reason(y, s) -> tuple[float | None, str | None]:
    """``(AUROC, None)``, or ``(None, reason)`` when only one class is present (AUROC undefined, never NaN)."""
    y = np.asarray(y)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if not n_pos or not n_neg:
        return None, f"undefined: {n_pos} positive and {n_neg} negative labelled images (needs both)"
    return binary_auroc(y, s), None


def one_vs_rest_auroc(scores, labels, class_names: Sequence[str]) -> dict:
    """Macro one-vs-rest AUROC of (N, C) class scores: class k's column scores "k vs the rest".

    The raw score column is used (no softmax), so the value does not depend on a temperature. Returns
    ``{"macro": mean over defined classes or None, "per_class": {name: AUROC or None}, "undefined": {name: why}}``.
    """
    s = _as_scores(scores, "scores")
    labels = np.asarray(labels)
    if labels.shape != (s.shape[0],) or len(class_names) != s.shape[1]:
        raise ValueError(f"labels {labels.shape} / {len(class_names)} names do not match scores {s.shape}")
    per, undefined = {}, {}
    for k, name in enumerate(class_names):
        per[name], why = auroc_or_reason((labels == k).astype(int), s[:, k])
        if why:
            undefined[name] = why
    defined = [v for v in per.values() if v is not None]
    return {"macro": float(np.mean(defined)) if defined else None, "per_class": per, "undefined": undefined}


def multilabel_auroc(labels, probs, findings: Sequence[str]) -> dict:
    """Per-finding AUROC and their macro mean for multi-label zero-shot classification.

    ``labels``: (N, F) with 1 (present), 0 (absent) and NaN (no label: the image does not count for that finding);
    ``probs``: (N, F) scores, e.g. ``softmax([s⁺, s⁻])₀`` per finding. A finding whose labelled images hold only one
    class is reported in ``undefined`` with the reason and left out of the macro mean (``n_defined`` says how many
    findings it averages). Returns ``{"macro", "per_finding": {f: AUROC or None}, "undefined": {f: why},
    "counts": {f: {"pos", "neg", "unlabelled"}}, "n_defined", "n_findings", "n_images"}``.
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 2 or y.shape != p.shape or y.shape[1] != len(findings):
        raise ValueError(f"labels {y.shape}, probs {p.shape} and {len(findings)} findings do not match")
    known = ~np.isnan(y)
    if not np.isin(y[known], (0.0, 1.0)).all():
        raise ValueError("labels must be 0, 1 or NaN (unlabelled)")
    if np.isnan(p).any():
        raise ValueError("probs contains NaN")
    per, undefined, counts = {}, {}, {}
    for j, f in enumerate(findings):
        m = known[:, j]
        yj = y[m, j].astype(int)
        counts[f] = {"pos": int(yj.sum()), "neg": int((yj == 0).sum()), "unlabelled": int((~m).sum())}
        per[f], why = auroc_or_reason(yj, p[m, j])
        if why:
            undefined[f] = why
    defined = [v for v in per.values() if v is not None]
    return {"macro": float(np.mean(defined)) if defined else None, "per_finding": per, "undefined": undefined,
            "counts": counts, "n_defined": len(defined), "n_findings": len(findings), "n_images": int(y.shape[0])}


# ---------------------------------------------------------------------------------------------- seeds and spread
def seed_spread(per_seed: dict) -> dict:
    """Mean ± sd over seeds of every metric the seeds share: ``{seed: {metric: value}}`` ->
    ``{metric: {"mean", "sd", "n_seeds", "per_seed": {seed: value}}}``.

    ``sd`` is the sample standard deviation (ddof = 1), None with one seed. A metric missing or non-finite for some
    seed is summarised over the seeds that have it and says so through ``n_seeds``.
    """
    metrics: dict[str, dict] = {}
    for seed, values in per_seed.items():
        for k, v in values.items():
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v):
                metrics.setdefault(k, {})[seed] = float(v)
    out = {}
    for k, by_seed in metrics.items():
        vals = np.array(list(by_seed.values()), dtype=np.float64)
        out[k] = {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1)) if vals.size > 1 else None,
                  "n_seeds": int(vals.size), "per_seed": by_seed}
    return out
