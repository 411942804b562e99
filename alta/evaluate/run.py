"""Stage ``evaluate``: score one or more models on every configured benchmark (docs/evaluation.md).

Inputs
    ``--model NAME=CHECKPOINT`` (repeatable): ``mrm`` (an MRM checkpoint, evaluated as the ALTA model it
    initialises, i.e. before alignment), ``align`` (our ALTA checkpoint) or ``official`` (an official ``ALTA.pth``);
    ``--model NAME@SEED=CHECKPOINT`` gives one seed of a model trained with several (``align.seeds``);
    ``--pairs``/``--images``/``--extract-dir`` for the held-out retrieval; ``--tokenizer``; ``--config-json`` (the
    ``evaluate`` config section: benchmark file paths, RSNA rendering and prompts, prompt aggregation, batch size).
Outputs (under ``--out``)
    ``metrics/<model>/<benchmark>.json``: metrics plus the protocol record (file fingerprints, transform, prompts,
    aggregation, counts, checkpoint hash, ``contamination_risk``); ``comparison.csv`` and ``report.md`` (one row per
    model, one column per headline metric); ``plots/*.png`` (P@K bars, ROC curves, confusion matrices, a retrieval
    example grid). Each model is one MLflow child run (tag ``alta.model``) so the UI compares models side by side.
    With seeds: ``metrics/<model>_seed<N>/`` per seed, ``spread.json`` (every metric's mean, sample sd and per-seed
    values), mean ± sd rows in ``report.md`` / ``comparison.csv``, and a child run ``evaluate:<model> (seeds)``.

A benchmark runs when the config names its files; a missing benchmark is reported as skipped, never silently.
Embeddings follow the inference path of docs/method.md §2.10 (eval mode, fp32, no masking, current+frontal embeddings).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

import numpy as np
import torch

from alta import io, tracking
from alta.evaluate import benchmarks as B
from alta.evaluate import metrics as M
from alta.evaluate import prompts as P
from alta.evaluate import report as R
from alta.evaluate.embedding import Embedder

log = logging.getLogger("alta.evaluate")

HEADLINE = {
    "chexpert5x200": ["i2t_P@5", "i2t_P@10", "i2t_P@100", "zeroshot_acc", "zeroshot_auroc_macro"],
    "chexpert8x200": ["t2i_P@5", "t2i_P@10", "t2i_P@50", "i2i_P@5", "i2i_P@10", "i2i_P@50"],
    "rsna": ["auroc", "acc@0.5", "f1@0.5", "acc@val", "f1@val", "acc_cv10", "f1_cv10"],
    # held-out keys carry the pool size, e.g. i2t_R@1_of_73 (headline_keys fills it in from the results)
    "heldout": ["i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"],
    "multilabel": ["auroc_macro"],
}
BENCHMARKS = ("chexpert5x200", "chexpert8x200", "rsna", "multilabel", "heldout")


def pool_key(key: str, pool_size: int) -> str:
    """A held-out metric name with its candidate pool: ``i2t_R@1`` over 73 studies is ``i2t_R@1_of_73``."""
    return f"{key}_of_{int(pool_size)}"


def headline_keys(results: dict[str, dict]) -> dict[str, list[str]]:
    """:data:`HEADLINE` with the held-out pool size(s) of ``results`` written into the held-out names."""
    pools = sorted({r["heldout"]["pool_size"] for r in results.values() if "pool_size" in r.get("heldout", {})})
    return {**HEADLINE, "heldout": [pool_key(k, n) for n in pools for k in HEADLINE["heldout"]]}


def _valid_ks(ks, class_sizes) -> tuple[list[int], list[int]]:
    """Split ks into those <= the smallest class (reportable, docs/evaluation.md §6.3) and the skipped ones."""
    cap = int(min(class_sizes))
    return [k for k in ks if k <= cap], [k for k in ks if k > cap]


def _precision(sim, q_labels, c_labels, ks, prefix, out):
    ok, skipped = _valid_ks(ks, np.bincount(c_labels)[np.unique(q_labels)])
    for k, v in M.precision_at_k(sim, q_labels, c_labels, ok).items():
        out[f"{prefix}_P@{k}"] = v
    if skipped:
        out[f"{prefix}_skipped_K"] = skipped  # K above the class size is never reported (docs/evaluation.md §6.3)


def chexpert5x200(emb: Embedder, cfg: dict) -> dict:
    """5x200 image-to-text P@5/10/100 and zero-shot accuracy (docs/evaluation.md §1-2)."""
    df = B.read_chexpert_5x200(cfg["chexpert_5x200"], image_root=cfg.get("chexpert_root"))
    img = emb.images_from_files(df["path"])
    txt = emb.texts(df["text_clean"].tolist(), P.TEXT_PROTOCOLS["chexpert5x200_i2t"])
    labels = df["label"].to_numpy()
    out: dict = {}
    _precision(img @ txt.T, labels, labels, (5, 10, 100), "i2t", out)
    prompts = P.chexpert5_prompts(cleaned=True)
    proto = P.TEXT_PROTOCOLS["chexpert5x200_zeroshot"]
    proj = {c: emb.texts(p, proto, normalize=False) for c, p in prompts.items()}
    scores = P.class_scores(img, proj, aggregation=cfg.get("prompt_aggregation", "mean_embedding"))
    zs = M.zero_shot_accuracy(scores, labels, class_names=list(prompts))
    out.update(zeroshot_acc=zs["acc"], zeroshot_per_class=zs["per_class"], zeroshot_confusion=zs["confusion"])
    # Macro one-vs-rest AUROC (what newer papers quote next to accuracy), on each class's raw score column.
    ovr = M.one_vs_rest_auroc(scores, labels, list(prompts))
    out["zeroshot_auroc_macro"] = ovr["macro"]
    out.update({f"zeroshot_auroc/{c}": v for c, v in ovr["per_class"].items()})
    if ovr["undefined"]:
        out["zeroshot_auroc_undefined"] = ovr["undefined"]
    out["protocol"] = {"benchmark": df.attrs.get("benchmark"), "aggregation": cfg.get("prompt_aggregation"),
                       "prompt_counts": {c: len(p) for c, p in prompts.items()}, "n_queries": len(df),
                       "text": emb.last_text_record}
    return out


def chexpert8x200(emb: Embedder, cfg: dict) -> dict:
    """ConVIRT 8x200 text-to-image and image-to-image P@5/10/50 (docs/evaluation.md §3)."""
    sets = B.read_convirt(cfg["convirt_root"], image_root=cfg.get("chexpert_root"))
    cand = emb.images_from_files(sets.candidates["path"])
    c_labels = sets.candidates["label"].to_numpy()
    out: dict = {}
    tq = emb.texts(sets.text_queries["text"].tolist(), P.TEXT_PROTOCOLS["convirt_t2i"])
    _precision(tq @ cand.T, sets.text_queries["label"].to_numpy(), c_labels, (5, 10, 50), "t2i", out)
    iq = emb.images_from_files(sets.image_queries["path"])
    _precision(iq @ cand.T, sets.image_queries["label"].to_numpy(), c_labels, (5, 10, 50), "i2i", out)
    out["protocol"] = {"benchmark": sets.info, "n_candidates": len(cand), "n_text_queries": len(tq),
                       "n_image_queries": len(iq), "text": emb.last_text_record}
    return out


def rsna(emb: Embedder, cfg: dict) -> dict:
    """RSNA pneumonia zero-shot: AUROC, ACC/F1 at 0.5, val-tuned, and the reference 10-fold protocol (§4)."""
    render = "reference_rsna" if cfg.get("rsna_render", "reference") == "reference" else "mimic_jpg"
    pos, neg = P.rsna_prompts(cfg.get("rsna_prompts", "alta_1x1"))
    proto = P.TEXT_PROTOCOLS["rsna"]
    t_pos = P.mean_embedding(emb.texts(pos, proto, normalize=False))
    t_neg = P.mean_embedding(emb.texts(neg, proto, normalize=False))

    def probs(list_file):
        df = B.read_rsna_list(list_file, image_root=cfg.get("rsna_root"))
        v = emb.images_from_dicoms(df["path"], render)
        s_pos, s_neg = P.binary_prompt_scores(v, t_pos[None], t_neg[None])
        return df, M.pneumonia_probability(np.ravel(s_pos), np.ravel(s_neg))

    test, p_test = probs(cfg["rsna_test_list"])
    val, p_val = probs(cfg["rsna_val_list"]) if cfg.get("rsna_val_list") else (None, None)
    out = M.rsna_report(test["label"].to_numpy(), p_test, None if val is None else val["label"].to_numpy(), p_val)
    out["roc_points"] = R.roc_points(test["label"].to_numpy(), p_test)
    out["protocol"] = {"test": test.attrs.get("benchmark"), "val": None if val is None else val.attrs.get("benchmark"),
                       "render": render, "prompts": cfg.get("rsna_prompts", "alta_1x1"), "text": emb.last_text_record}
    return out


def multilabel(emb: Embedder, cfg: dict) -> dict:
    """Multi-label zero-shot AUROC (CheXzero / CARZero protocol): per finding, ``p = softmax([s⁺, s⁻])₀`` of the
    image against the finding's positive and negative prompt (temperature 1); AUROC per finding over the images
    labelled for it, and the macro mean over the findings where it is defined (both classes present)."""
    df = B.read_labelled_list(cfg["multilabel_list"], fmt=cfg.get("multilabel_format", "generic"),
                              image_root=cfg.get("multilabel_root"), split_list=cfg.get("multilabel_split_list"),
                              findings=cfg.get("multilabel_findings"),
                              uncertain=cfg.get("multilabel_uncertain", "ignore"))
    findings = df.attrs["benchmark"]["findings"]
    prompts = P.multilabel_prompts(findings, cfg.get("multilabel_prompts"),
                                   tuple(cfg.get("multilabel_template") or P.MULTILABEL_TEMPLATE))
    proto = P.TEXT_PROTOCOLS["multilabel"]
    t = emb.texts([s for f in findings for s in prompts[f]], proto)  # L2-normalised: s = cosine
    t_pos, t_neg = t[0::2], t[1::2]
    v = emb.images_from_files(df["path"])
    probs = M.pneumonia_probability(v @ t_pos.T, v @ t_neg.T)  # σ(s⁺ − s⁻) = softmax([s⁺, s⁻])₀
    res = M.multilabel_auroc(df[findings].to_numpy(), probs, findings)
    out: dict = {"auroc_macro": res["macro"], "n_findings_defined": res["n_defined"],
                 **{f"auroc/{f}": v for f, v in res["per_finding"].items()},
                 "auroc_undefined": res["undefined"], "counts": res["counts"], "n_images": res["n_images"]}
    out["protocol"] = {"benchmark": df.attrs["benchmark"], "probability": "softmax over (positive, negative) "
                       "cosine similarities, temperature 1", "prompts": {f: list(p) for f, p in prompts.items()},
                       "macro": "mean over findings with both classes labelled", "text": emb.last_text_record}
    return out


def study_frontals(pairs, split: str, source: str = "pairs.parquet"):
    """One row per study of ``split``: its canonical current frontal (PA before AP, then the smallest dicom_id)."""
    rows = pairs[pairs["split"] == split].copy()
    if rows.empty:
        raise ValueError(f"{source}: no rows in split {split!r}")
    rows["_pa"] = (rows["view_position"] != "PA").astype(int)
    return rows.sort_values(["study_id", "_pa", "dicom_id"]).drop_duplicates("study_id").drop(columns="_pa")


def heldout(emb: Embedder, cfg: dict, pairs_path: str, images_path: str, extract_dir: str) -> dict:
    """Instance-level Recall@K both directions on the held-out split, duplicate texts merged (§5)."""
    split = cfg.get("heldout_split", "test")
    rows = study_frontals(io.read_parquet(pairs_path), split, pairs_path)
    img = emb.images_from_store(rows["dicom_id"].tolist(), images_path, extract_dir)
    texts = rows["text"].tolist()
    txt = emb.texts(texts, P.TEXT_PROTOCOLS["mimic_recall"])
    groups, positives = M.duplicate_positive_sets(texts)
    sim = img @ txt.T
    out: dict = {}
    n = len(rows)
    for direction, s in (("i2t", sim), ("t2i", sim.T)):
        r = M.recall_at_k(s, positives, ks=[k for k in (1, 5, 10, 50) if k <= s.shape[1]])
        # R@K and MedR depend on the pool size, so it is part of the name: i2t_R@1_of_73 (R@1 over 73 candidates)
        out.update({pool_key(f"{direction}_{k}", n): v for k, v in r.items() if k.startswith("R@") or k == "MedR"})
    out.update({"n_studies": n, "n_unique_texts": int(len(set(groups))), "pool_size": n,
                pool_key("chance_R@5", n): min(1.0, 5 / n), pool_key("chance_R@1", n): 1 / n})
    out["examples"] = R.retrieval_examples(sim, rows["dicom_id"].tolist(), texts, k=3, n=4)
    out["protocol"] = {"split": split, "pairs": io.sha256_file(pairs_path), "ties": "pessimistic",
                       "text": emb.last_text_record}
    return out


def benchmarks_to_run(cfg: dict) -> dict[str, str | None]:
    """Benchmark -> None when runnable, else the reason it is skipped (missing config keys or files)."""
    need = {"chexpert5x200": ["chexpert_5x200", "chexpert_root"], "chexpert8x200": ["convirt_root", "chexpert_root"],
            "rsna": ["rsna_test_list", "rsna_root"], "multilabel": ["multilabel_list", "multilabel_root"],
            "heldout": []}
    need = {b: need[b] for b in BENCHMARKS}
    status: dict[str, str | None] = {}
    for name, keys in need.items():
        missing = [k for k in keys if not cfg.get(k)]
        optional = ["multilabel_split_list"] if name == "multilabel" and cfg.get("multilabel_list") else []
        absent = [cfg[k] for k in keys + optional if cfg.get(k) and not Path(cfg[k]).exists()]
        status[name] = (f"config keys not set: {missing}" if missing else
                        f"files not found: {absent}" if absent else None)
    return status


def parse_models(specs: list[str]) -> dict[str, tuple[str, int | None, str]]:
    """``--model`` values -> ``{label: (kind, seed, checkpoint)}``.

    ``NAME=CKPT`` is one model (label ``NAME``); ``NAME@SEED=CKPT`` is seed SEED of NAME (label ``NAME_seedSEED``):
    the seeds of one NAME are scored one by one and summarised as mean ± sd (``spread.json``).
    """
    out: dict[str, tuple[str, int | None, str]] = {}
    for spec in specs:
        name, sep, ckpt = spec.partition("=")
        kind, at, seed = name.partition("@")
        if not sep or not ckpt or not kind or (at and not seed.isdigit()):
            raise SystemExit(f"alta evaluate: --model {spec!r}: expected NAME=CHECKPOINT or NAME@SEED=CHECKPOINT")
        label = f"{kind}_seed{int(seed)}" if at else kind
        seeded = {k: s is not None for k, s, _ in out.values()}
        if label in out or (kind in seeded and seeded[kind] != bool(at)):
            raise SystemExit(f"alta evaluate: --model {spec!r}: {label} given twice, or {kind} with and without seeds")
        out[label] = (kind, int(seed) if at else None, ckpt)
    return out


def seed_groups(models: dict[str, tuple[str, int | None, str]]) -> dict[str, dict[int, str]]:
    """``{kind: {seed: label}}`` for every model given with seeds."""
    groups: dict[str, dict[int, str]] = {}
    for label, (kind, seed, _) in models.items():
        if seed is not None:
            groups.setdefault(kind, {})[seed] = label
    return groups


def spread_over_seeds(all_results: dict[str, dict], groups: dict[str, dict[int, str]]) -> dict:
    """``{kind: {"seeds", "labels", "benchmarks": {bench: {metric: {mean, sd, n_seeds, per_seed}}}}}``."""
    out = {}
    for kind, by_seed in groups.items():
        benches = {}
        for bench in BENCHMARKS:
            per_seed = {s: all_results[lab].get(bench, {}) for s, lab in sorted(by_seed.items())}
            if all("skipped" not in r for r in per_seed.values()):
                benches[bench] = M.seed_spread(per_seed)
        out[kind] = {"seeds": sorted(by_seed), "labels": {s: by_seed[s] for s in sorted(by_seed)},
                     "sd": "sample standard deviation (ddof = 1)", "benchmarks": benches}
    return out


def log_spread(spread: dict, out: Path, cfg: dict) -> None:
    """One MLflow child run per seeded model: every metric's mean and sd beside each seed's value."""
    for kind, rec in spread.items():
        with tracking.stage_run("evaluate", params=cfg, out_dir=out / "metrics" / kind,
                                run_name=f"evaluate:{kind} (seeds)") as run:
            run.set_tags({"alta.model": kind, "alta.seeds": ",".join(map(str, rec["seeds"]))})
            metrics = {}
            for bench, table in rec["benchmarks"].items():
                for key, st in table.items():
                    base = mlflow_name(f"{bench}.{key}")
                    metrics[f"{base}.mean"] = st["mean"]
                    if st["sd"] is not None:
                        metrics[f"{base}.sd"] = st["sd"]
                    metrics.update({f"{base}.seed{s}": v for s, v in st["per_seed"].items()})
            run.log_metrics(metrics)


def evaluate_model(label: str, spec: tuple[str, int | None, str], args, cfg: dict) -> dict[str, dict]:
    name, seed, ckpt = spec
    emb = Embedder.from_checkpoint(name, ckpt, tokenizer_dir=args.tokenizer, text_dir=args.text_dir,
                                   mrm_options=json.loads(args.mrm_options), mrm_preset=args.mrm_preset,
                                   mrm_overrides=json.loads(args.mrm_overrides),
                                   batch_size=cfg.get("batch_size", 64), trust=name in (args.trust or []))
    results: dict[str, dict] = {}
    status = benchmarks_to_run(cfg)
    params = {**cfg, "model": name, "checkpoint": ckpt, **({"seed": seed} if seed is not None else {})}
    with tracking.stage_run("evaluate", params=params, out_dir=Path(args.out) / "metrics" / label,
                            run_name=f"evaluate:{label}") as run:
        run.set_tags({"alta.model": label, "alta.checkpoint_sha256": emb.checkpoint_sha256,
                      "alta.checkpoint_bytes": str(emb.provenance["checkpoint_bytes"]), "alta.preset": emb.preset,
                      "alta.recipe": emb.provenance["recipe"],
                      "alta.recipe_differences": "; ".join(f"{k}={v!r}" for k, v in
                                                           emb.provenance.get("recipe_differences", {}).items())
                      or "none", **({"alta.seed": str(seed)} if seed is not None else {})})
        for bench, skip in status.items():
            if skip:
                log.warning("%s: skipping %s (%s)", label, bench, skip)
                results[bench] = {"skipped": skip}
                continue
            log.info("%s: %s", label, bench)
            fn = {"chexpert5x200": chexpert5x200, "chexpert8x200": chexpert8x200, "rsna": rsna,
                  "multilabel": multilabel}.get(bench)
            res = fn(emb, cfg) if fn else heldout(emb, cfg, args.pairs, args.images, args.extract_dir)
            res["model"] = {"name": name, "label": label, "seed": seed, "checkpoint": ckpt, **emb.describe()}
            io.write_json(Path(args.out) / "metrics" / label / f"{bench}.json", _finite(res))
            results[bench] = res
            run.log_metrics({mlflow_name(f"{bench}.{k}"): v for k, v in res.items() if _is_number(v)})
    return results


def mlflow_name(key: str) -> str:
    """MLflow metric names allow letters, digits, ``_ - . / `` and spaces: ``i2t_P@5`` is logged as ``i2t_P_at_5``
    (metric files keep the ``@`` names of docs/evaluation.md); any other character (a finding name's) becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", key.replace("@", "_at_"))


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and np.isfinite(v)


def _finite(obj):
    """NaN/inf -> None so metric files are strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not np.isfinite(obj):
        return None
    return obj


def add_model_inputs(ap: argparse.ArgumentParser, model_help: str) -> None:
    """The inputs every command that loads checkpoints against the run's data takes (evaluate, probe)."""
    ap.add_argument("--model", action="append", required=True, metavar="NAME=CHECKPOINT", help=model_help)
    ap.add_argument("--pairs", required=True, help="pairs.parquet")
    ap.add_argument("--images", required=True, help="images.parquet (packed-store index)")
    ap.add_argument("--extract-dir", required=True, help="extract output folder holding the packed stores")
    ap.add_argument("--tokenizer", required=True, help="tokenizer directory saved with the run")
    ap.add_argument("--text-dir", default=None,
                    help="local CXR-BERT directory or the text_pretrain model (the text tower of models built from "
                         "MRM weights; as align.text_dir)")
    ap.add_argument("--mrm-preset", default=None,
                    help="preset of an MRM file that records none (a released MRM.pth): the align stage's")
    ap.add_argument("--mrm-overrides", default="{}",
                    help="JSON preset overrides for such a file (the align stage's model_overrides)")
    ap.add_argument("--trust", action="append", metavar="NAME",
                    help="read model NAME's file keeping objects outside the allowlist as inert placeholders (a file you trust; nothing runs)")
    ap.add_argument("--mrm-options", default="{}",
                    help="JSON ALTA options for models built from MRM weights (the align stage's model_options), so "
                         "the baseline embeds what the aligned model embeds")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="alta evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_inputs(ap, "model to score: mrm=..., align=..., official=... (repeatable); align@0=..., align@1=... "
                         "are seeds of one model, reported one by one and as mean ± sd")
    ap.add_argument("--out", required=True, help="output folder (metrics/, plots/, comparison.csv, report.md)")
    ap.add_argument("--config-json", default="{}", help="the evaluate config section as JSON")
    args = ap.parse_args(argv)
    cfg = json.loads(args.config_json)
    models = parse_models(args.model)
    with torch.inference_mode():
        all_results = {label: evaluate_model(label, spec, args, cfg) for label, spec in models.items()}
    headline = headline_keys(all_results)
    out = Path(args.out)
    spread = spread_over_seeds(all_results, seed_groups(models))
    if spread:
        io.write_json(out / "spread.json", _finite(spread))
        log_spread(spread, out, cfg)
    table = R.comparison_table(all_results, headline, spread)
    io.write_text(out / "comparison.csv", table.to_csv(index=False))
    plots = R.write_plots(all_results, out / "plots")
    io.write_text(out / "report.md", R.markdown_report(all_results, table, plots, headline, spread))
    with tracking.stage_run("evaluate", params=cfg, out_dir=out, run_name="evaluate:comparison") as run:
        run.set_tags({"alta.model": "comparison"})
        for p in [out / "comparison.csv", out / "report.md", out / "plots", *([out / "spread.json"] * bool(spread))]:
            run.log_artifact(p)
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
