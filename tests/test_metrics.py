"""Metric and aggregation tests on synthetic embeddings (docs/evaluation.md §6 pitfalls)."""

from __future__ import annotations

import numpy as np
import pytest

from alta.evaluate import metrics as M
from alta.evaluate import prompts as P


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _clustered(rng, n_per_class, n_classes, dim=16, noise=0.8):
    centres = _unit(rng.normal(size=(n_classes, dim)))
    labels = np.repeat(np.arange(n_classes), n_per_class)
    emb = _unit(centres[labels] + noise * rng.normal(size=(labels.size, dim)))
    return emb.astype(np.float32), labels


# ------------------------------------------------------------------------------------------------ ranking / P@K
def test_stable_rank_order_breaks_ties_by_candidate_index():
    s = np.array([[0.5, 0.9, 0.5, 0.9, 0.1], [0.0, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    order = M.stable_rank_order(s)
    assert order[0].tolist() == [1, 3, 0, 2, 4]
    assert order[1].tolist() == [0, 1, 2, 3, 4]


def test_stable_rank_order_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        M.stable_rank_order(np.array([[0.1, np.nan]]))


def test_precision_at_k_matches_brute_force_on_clustered_embeddings():
    rng = np.random.default_rng(0)
    img, y_img = _clustered(rng, 20, 5)
    txt, y_txt = _clustered(rng, 20, 5)
    sim = img @ txt.T
    got = M.precision_at_k(sim, y_img, y_txt, ks=(1, 5, 10, 20))
    for k in (1, 5, 10, 20):
        expected = np.mean([np.mean(y_txt[np.argsort(-sim[q], kind="stable")[:k]] == y_img[q])
                            for q in range(len(y_img))])
        assert got[k] == pytest.approx(expected)
    assert 0.2 < got[5] <= 1.0  # clusters make it better than chance
    # A perfect embedding reaches exactly 1 at K = class size.
    perfect = (y_img[:, None] == y_txt[None, :]).astype(np.float32)
    assert M.precision_at_k(perfect, y_img, y_txt, ks=(20,))[20] == 1.0


def test_precision_at_k_ties_follow_candidate_order():
    # Query of class 1; all candidates tie. Stable order puts candidate 0 (class 0) first.
    sim = np.array([[0.3, 0.3, 0.3, 0.3]])
    q = np.array([1])
    c = np.array([0, 1, 1, 0])
    got = M.precision_at_k(sim, q, c, ks=(1, 2))
    assert got == {1: 0.0, 2: 0.5}


def test_precision_at_k_refuses_k_above_class_size():
    sim = np.zeros((2, 5))
    q = np.array([0, 1])
    c = np.array([0, 0, 0, 1, 1])  # class 1 has only 2 candidates
    with pytest.raises(ValueError, match="K=3 exceeds the smallest same-class candidate count"):
        M.precision_at_k(sim, q, c, ks=(1, 3))
    got = M.precision_at_k(sim, q, c, ks=(3,), allow_k_above_class=True)
    assert got[3] == pytest.approx((1.0 + 0.0) / 2)  # ties -> candidates 0,1,2 for both queries
    with pytest.raises(ValueError, match="candidate pool"):
        M.precision_at_k(sim, q, c, ks=(6,), allow_k_above_class=True)


def test_precision_at_k_self_match_exclusion():
    rng = np.random.default_rng(1)
    emb, y = _clustered(rng, 4, 3, noise=3.0)
    sim = emb @ emb.T  # the pool contains every query: diagonal = 1
    trivial = M.precision_at_k(sim, y, y, ks=(1,))[1]
    assert trivial == 1.0
    excl = M.precision_at_k(sim, y, y, ks=(1, 3), exclude_self=np.eye(len(y), dtype=bool))
    nearest_other = [np.argsort(-np.where(np.arange(len(y)) == q, -np.inf, sim[q]), kind="stable")[0]
                     for q in range(len(y))]
    assert excl[1] == pytest.approx(np.mean(y[nearest_other] == y))
    assert excl[1] < 1.0
    # With the query removed, only 3 same-class candidates remain: K=4 is refused.
    with pytest.raises(ValueError, match="K=4"):
        M.precision_at_k(sim, y, y, ks=(4,), exclude_self=np.eye(len(y), dtype=bool))


# ----------------------------------------------------------------------------------------------------- R@K
def test_recall_pessimistic_ties():
    sim = np.array([[0.5, 0.5, 0.2], [0.5, 0.5, 0.2], [0.1, 0.9, 0.9]])
    ranks = M.retrieval_ranks(sim, [{0}, {1}, {2}])
    # An equal-scoring negative counts as ranked ahead, whichever index it has.
    assert ranks.tolist() == [2, 2, 2]
    out = M.recall_at_k(sim, [{0}, {1}, {2}], ks=(1, 2))
    assert out["R@1"] == 0.0 and out["R@2"] == 1.0 and out["MedR"] == 2.0
    assert out["pool_size"] == 3 and out["n_queries"] == 3 and out["ties"] == "pessimistic"


def test_recall_matches_brute_force_and_matrix_input():
    rng = np.random.default_rng(2)
    img = _unit(rng.normal(size=(60, 8)))
    txt = _unit(img + 0.7 * rng.normal(size=img.shape))
    sim = (img @ txt.T).astype(np.float32)
    positives = [{i} for i in range(60)]
    ranks = M.retrieval_ranks(sim, positives)
    brute = [1 + int(np.sum(np.delete(sim[i], i) >= sim[i, i])) for i in range(60)]
    assert ranks.tolist() == brute
    a = M.recall_at_k(sim, positives, ks=(1, 5, 10, 50))
    b = M.recall_at_k(sim, np.eye(60, dtype=bool), ks=(1, 5, 10, 50))
    assert a == b
    assert a["R@1"] <= a["R@5"] <= a["R@10"] <= a["R@50"]
    assert a["MedR"] == float(np.median(brute))


def test_duplicate_positive_sets_merge_normalised_duplicates():
    texts = ["No acute  findings.", "no acute findings. ", "Cardiomegaly.", "NO ACUTE\nFINDINGS."]
    groups, pos = M.duplicate_positive_sets(texts)
    assert groups.tolist() == [0, 0, 1, 0]
    assert pos[0] == pos[1] == pos[3] == {0, 1, 3} and pos[2] == {2}
    # Query 0's own text scores below its duplicate: with positive sets that is still rank 1 (both directions
    # use the same sets), while a singleton positive set gives rank 3.
    sim = np.array([[0.7, 0.9, 0.1, 0.8],
                    [0.9, 0.7, 0.1, 0.8],
                    [0.2, 0.1, 0.9, 0.3],
                    [0.9, 0.8, 0.1, 0.7]])
    assert M.retrieval_ranks(sim, pos).tolist() == [1, 1, 1, 1]
    assert M.retrieval_ranks(sim, [{i} for i in range(4)]).tolist() == [3, 3, 1, 3]
    assert M.retrieval_ranks(sim.T, pos).tolist() == [1, 1, 1, 1]


def test_recall_requires_a_positive_per_query_and_k_within_pool():
    with pytest.raises(ValueError, match="no positive"):
        M.recall_at_k(np.zeros((2, 3)), [{0}, set()], ks=(1,))
    with pytest.raises(ValueError, match="pool size"):
        M.recall_at_k(np.zeros((2, 3)), [{0}, {1}], ks=(5,))


# ------------------------------------------------------------------------------------------------- zero-shot
def test_zero_shot_accuracy_confusion_and_first_max_tie():
    sim = np.array([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.0, 0.2, 0.8], [0.0, 0.9, 0.1]])
    y = np.array([0, 1, 2, 2])
    out = M.zero_shot_accuracy(sim, y, ["a", "b", "c"])
    assert out["acc"] == 0.5  # row 1 ties -> class 0 (first), row 3 -> class 1
    assert out["confusion"] == [[1, 0, 0], [1, 0, 0], [0, 1, 1]]
    assert out["per_class"] == {"a": 1.0, "b": 0.0, "c": 0.5}
    assert out["class_counts"] == {"a": 1, "b": 1, "c": 2}


# ------------------------------------------------------------------------------------------------------- RSNA
def test_auroc_ties_count_half():
    assert M.auroc([0, 1], [0.5, 0.5]) == 0.5
    assert M.auroc([0, 0, 1, 1], [0.1, 0.4, 0.4, 0.8]) == pytest.approx(3.5 / 4)
    with pytest.raises(ValueError, match="both"):
        M.auroc([1, 1], [0.2, 0.3])


def test_pneumonia_probability_is_two_way_softmax():
    s_pos = np.array([0.31, 0.30, 0.10], dtype=np.float32)
    s_neg = np.array([0.30, 0.30, 0.40], dtype=np.float32)
    p = M.pneumonia_probability(s_pos, s_neg)
    e = np.exp(np.stack([s_pos, s_neg], 1).astype(np.float64))
    assert np.allclose(p, e[:, 0] / e.sum(1))
    assert p[1] == 0.5 and p[0] > 0.5 > p[2]
    assert M.auroc([1, 0, 0], p) == M.auroc([1, 0, 0], s_pos - s_neg)


def test_acc_f1_at_strict_threshold_and_nan():
    y = np.array([1, 1, 0, 0])
    p = np.array([0.5, 0.7, 0.5, 0.2])
    m = M.acc_f1_at(y, p, 0.5)  # p == 0.5 is predicted negative
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 0, 1, 2)
    assert m["acc"] == 0.75 and m["precision"] == 1.0 and m["recall"] == 0.5
    assert m["f1"] == pytest.approx(2 / 3)
    none_pred = M.acc_f1_at(y, p, 0.9)
    assert np.isnan(none_pred["precision"]) and np.isnan(none_pred["f1"]) and none_pred["acc"] == 0.5


def test_threshold_grid_first_maximum_and_nan_never_wins():
    assert len(M.THRESHOLD_GRID) == 201 and M.THRESHOLD_GRID[1] == 0.005 and M.THRESHOLD_GRID[-1] == 1.0
    y = np.array([0, 1, 1])
    p = np.array([0.2, 0.6, 0.7])
    # F1 = 1 for every τ in [0.2, 0.6): the first grid value wins.
    assert M.tune_threshold_f1(y, p) == (0.2, 1.0)
    # NaN first (nothing predicted positive at 0.9) must not block a real F1 later in the scan.
    tau, f1 = M.tune_threshold_f1(y, p, grid=[0.9, 0.1])
    assert tau == 0.1 and f1 == pytest.approx(0.8)
    # All NaN: the reference's starting τ (first grid value) and NaN.
    tau, f1 = M.tune_threshold_f1(np.array([0, 0, 0]), p)
    assert tau == 0.0 and np.isnan(f1)


def _f1_vs_acc_case():
    # 700 clean negatives at 0.3; 200 negatives and 100 positives at 0.6.
    # τ in [0.3, 0.6): F1 0.5, ACC 0.8.  τ >= 0.6: F1 NaN, ACC 0.9 (an accuracy search would pick this).
    y = np.r_[np.zeros(700), np.zeros(200), np.ones(100)].astype(int)
    p = np.r_[np.full(700, 0.3), np.full(300, 0.6)]
    return y, p


def test_reference_cv10_maximises_f1_not_accuracy():
    y, p = _f1_vs_acc_case()
    cv = M.reference_cv10(y, p)
    assert cv["taus"] == [0.3] * 10  # an accuracy search would give 0.6 in every fold
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(10, shuffle=True, random_state=0).split(p.reshape(-1, 1), y)
    f1s, accs = [], []
    for _, test in folds:
        pred, yt = p[test] > 0.3, y[test] == 1
        tp = np.sum(pred & yt)
        f1s.append(2 * tp / (pred.sum() + yt.sum()))
        accs.append(np.mean(pred == yt))
    assert cv["f1"] == pytest.approx(np.mean(f1s)) and cv["acc"] == pytest.approx(np.mean(accs))
    assert cv["acc"] < 0.85  # the accuracy-optimal threshold would score 0.9
    assert cv["protocol"] == "ALTA protocol (transductive)"


def test_reference_cv10_is_deterministic():
    rng = np.random.default_rng(3)
    y = (rng.random(600) < 0.36).astype(int)
    p = np.clip(0.5 + 0.02 * rng.normal(size=600) + 0.01 * y, 0, 1)
    a, b = M.reference_cv10(y, p), M.reference_cv10(y.copy(), p.copy())
    assert a == b
    assert len(a["taus"]) == 10 and set(a["taus"]) <= set(M.THRESHOLD_GRID.tolist())
    assert a["acc"] == pytest.approx(np.mean(a["fold_acc"])) and a["f1"] == pytest.approx(np.mean(a["fold_f1"]))


def test_rsna_report_keys_and_values():
    y, p = _f1_vs_acc_case()
    rep = M.rsna_report(y, p)
    expected = {"auroc", "acc@0.5", "f1@0.5", "precision@0.5", "recall@0.5", "acc@val", "f1@val", "tau_val",
                "acc_cv10", "f1_cv10", "taus_cv10", "cv10_protocol", "n", "n_pos", "n_neg", "n_val", "n_val_pos"}
    assert set(rep) == expected
    assert rep["tau_val"] is None and rep["acc@val"] is None
    assert (rep["n"], rep["n_pos"], rep["n_neg"]) == (1000, 100, 900)
    assert rep["acc@0.5"] == pytest.approx(0.8) and rep["f1@0.5"] == pytest.approx(0.5)
    assert rep["auroc"] == pytest.approx(M.auroc(y, p))
    # Validation set whose best F1 threshold is 0.65 -> nothing at 0.6 is positive on test.
    yv = np.array([0, 0, 1, 1])
    pv = np.array([0.6, 0.65, 0.7, 0.8])
    rep = M.rsna_report(y, p, yv, pv)
    assert rep["tau_val"] == 0.65 and rep["n_val"] == 4 and rep["n_val_pos"] == 2
    assert rep["acc@val"] == pytest.approx(0.9) and np.isnan(rep["f1@val"])
    with pytest.raises(ValueError, match="both"):
        M.rsna_report(y, p, yv, None)


# --------------------------------------------------------------------------------------- prompt aggregation
def test_class_scores_aggregations():
    rng = np.random.default_rng(4)
    img = _unit(rng.normal(size=(5, 6)))
    proj = {"a": rng.normal(size=(3, 6)) * np.array([[1.0], [5.0], [0.2]]), "b": rng.normal(size=(2, 6))}
    s = P.class_scores(img, proj)  # default: mean of unnormalised projections, then normalise
    assert s.shape == (5, 2)
    assert np.allclose(s[:, 0], img @ _unit(proj["a"].mean(0)))
    mc = P.class_scores(img, proj, "mean_cosine")
    assert np.allclose(mc[:, 0], (img @ _unit(proj["a"]).T).mean(1))
    mx = P.class_scores(img, proj, "max_cosine")
    assert np.allclose(mx[:, 1], (img @ _unit(proj["b"]).T).max(1))
    assert not np.allclose(s[:, 0], mc[:, 0])  # the norms of the projections matter only for mean_embedding
    with pytest.raises(ValueError, match="normalised"):
        P.class_scores(img * 2, proj)
    with pytest.raises(ValueError, match="aggregation"):
        P.class_scores(img, proj, "sum")
    s_pos, s_neg = P.binary_prompt_scores(img, proj["a"], proj["b"])
    assert np.allclose(s_pos, s[:, 0]) and np.allclose(s_neg, s[:, 1])


# ------------------------------------------------------------------------------------ AUROC (own implementation)
def test_binary_auroc_agrees_with_sklearn_including_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    for trial in range(20):
        n = int(rng.integers(5, 300))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        s = np.round(rng.normal(size=n) + 0.7 * y, int(rng.integers(0, 3)))  # coarse rounding: many ties
        assert M.binary_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12), trial
    assert M.binary_auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert M.binary_auroc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts one half


def test_one_class_auroc_is_undefined_with_a_reason():
    value, why = M.auroc_or_reason([1, 1, 1], [0.1, 0.5, 0.9])
    assert value is None and "3 positive and 0 negative" in why
    with pytest.raises(ValueError, match="both positive and negative"):
        M.binary_auroc([0, 0], [0.1, 0.2])


def test_multilabel_auroc_per_finding_macro_and_unlabelled():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    n = 60
    y = rng.integers(0, 2, (n, 3)).astype(float)
    y[rng.random((n, 3)) < 0.2] = np.nan  # unlabelled cells
    y[:, 2] = np.where(np.isnan(y[:, 2]), np.nan, 1.0)  # finding C: only positives labelled -> undefined
    p = rng.random((n, 3))
    res = M.multilabel_auroc(y, p, ["A", "B", "C"])
    for j, f in enumerate("AB"):
        m = ~np.isnan(y[:, j])
        assert res["per_finding"][f] == pytest.approx(roc_auc_score(y[m, j], p[m, j]), abs=1e-12)
        assert res["counts"][f]["unlabelled"] == int((~m).sum())
    assert res["per_finding"]["C"] is None and "0 negative" in res["undefined"]["C"]
    assert res["macro"] == pytest.approx((res["per_finding"]["A"] + res["per_finding"]["B"]) / 2)
    assert res["n_defined"] == 2 and res["n_findings"] == 3
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        M.multilabel_auroc(np.full((2, 1), 2.0), np.zeros((2, 1)), ["A"])


def test_one_vs_rest_auroc_matches_sklearn_per_class():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    emb, labels = _clustered(rng, 20, 5)
    scores = emb @ _unit(rng.normal(size=(5, 16))).T
    res = M.one_vs_rest_auroc(scores, labels, list("abcde"))
    want = [roc_auc_score(labels == k, scores[:, k]) for k in range(5)]
    assert list(res["per_class"].values()) == pytest.approx(want, abs=1e-12)
    assert res["macro"] == pytest.approx(np.mean(want)) and res["undefined"] == {}
    res = M.one_vs_rest_auroc(scores[labels < 4], labels[labels < 4], list("abcde"))  # class e absent
    assert res["per_class"]["e"] is None and set(res["undefined"]) == {"e"}


def test_seed_spread_mean_and_sample_sd():
    per_seed = {0: {"acc": 0.5, "n": 10, "name": "x", "flag": True}, 1: {"acc": 0.7, "n": 10},
                2: {"acc": 0.6, "n": 10, "only_here": 1.0, "nan": float("nan")}}
    out = M.seed_spread(per_seed)
    assert out["acc"]["mean"] == pytest.approx(0.6) and out["acc"]["sd"] == pytest.approx(0.1)
    assert out["acc"]["per_seed"] == {0: 0.5, 1: 0.7, 2: 0.6} and out["acc"]["n_seeds"] == 3
    assert out["n"]["sd"] == 0.0 and out["only_here"] == {"mean": 1.0, "sd": None, "n_seeds": 1,
                                                          "per_seed": {2: 1.0}}
    assert "name" not in out and "flag" not in out and "nan" not in out
