"""Reporting for the ``evaluate`` stage: comparison table, Markdown report and plots.

Inputs are the per-model result dicts of :mod:`alta.evaluate.run` (``{model: {benchmark: {metric: value}}}``);
outputs are a pandas table (one row per model, one column per ``benchmark.metric``), a Markdown report, and PNGs:
P@K bars per benchmark, RSNA ROC curves, 5x200 zero-shot confusion matrices and a held-out retrieval example grid.
Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from alta import io


def roc_points(y: np.ndarray, p: np.ndarray, max_points: int = 200) -> dict:
    """ROC curve (FPR, TPR) thinned to at most ``max_points`` points, for plotting from the metric file."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(y), np.asarray(p))
    idx = np.unique(np.linspace(0, len(fpr) - 1, min(max_points, len(fpr))).round().astype(int))
    return {"fpr": fpr[idx].tolist(), "tpr": tpr[idx].tolist()}


def retrieval_examples(sim: np.ndarray, image_ids: list[str], texts: list[str], k: int = 3, n: int = 4) -> list[dict]:
    """The first ``n`` queries with their true text and top-``k`` retrieved texts (stable ranking)."""
    order = np.lexsort((np.broadcast_to(np.arange(sim.shape[1]), sim.shape), -sim), axis=1)
    return [{"image_id": image_ids[i], "true_text": texts[i],
             "retrieved": [{"text": texts[j], "score": float(sim[i, j]), "correct": bool(j == i)}
                           for j in order[i, :k]]}
            for i in range(min(n, sim.shape[0]))]


def comparison_table(results: dict[str, dict], headline: dict[str, list[str]], spread: dict | None = None
                     ) -> pd.DataFrame:
    """One row per model, one column per ``benchmark.metric`` of ``headline`` present in any model's results.

    With ``spread`` (models trained with several seeds, :func:`alta.evaluate.run.spread_over_seeds`), each seed is
    its own row (``align_seed0``, ...) and ``<model> (mean)`` / ``<model> (sd)`` rows follow them.
    """
    rows = []
    for model, benches in results.items():
        row = {"model": model}
        for bench, keys in headline.items():
            res = benches.get(bench, {})
            for key in keys:
                v = res.get(key)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    row[f"{bench}.{key}"] = float(v)
        rows.append(row)
    for kind, rec in (spread or {}).items():
        for stat in ("mean", "sd"):
            row = {"model": f"{kind} ({stat})"}
            for bench, keys in headline.items():
                for key in keys:
                    v = rec["benchmarks"].get(bench, {}).get(key, {}).get(stat)
                    if v is not None:
                        row[f"{bench}.{key}"] = float(v)
            rows.append(row)
    table = pd.DataFrame(rows)
    cols = ["model"] + [c for c in table.columns if c != "model"]
    return table[cols]


def _plot_precision_bars(results, bench, prefix, path) -> bool:
    import matplotlib.pyplot as plt

    models = [m for m in results if any(k.startswith(prefix + "_P@") for k in results[m].get(bench, {}))]
    if not models:
        return False
    ks = sorted({int(k.split("@")[1]) for m in models for k in results[m][bench] if k.startswith(prefix + "_P@")})
    fig, ax = plt.subplots(figsize=(5, 3.2))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        vals = [results[m][bench].get(f"{prefix}_P@{k}", np.nan) for k in ks]
        ax.bar(np.arange(len(ks)) + i * width, vals, width, label=m)
    ax.set_xticks(np.arange(len(ks)) + width * (len(models) - 1) / 2, [f"P@{k}" for k in ks])
    ax.set_ylim(0, 1)
    ax.set_title(f"{bench} {prefix}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _plot_roc(results, path) -> bool:
    import matplotlib.pyplot as plt

    models = [m for m in results if "roc_points" in results[m].get("rsna", {})]
    if not models:
        return False
    fig, ax = plt.subplots(figsize=(4, 4))
    for m in models:
        r = results[m]["rsna"]
        ax.plot(r["roc_points"]["fpr"], r["roc_points"]["tpr"], label=f"{m} (AUROC {r['auroc']:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("RSNA pneumonia zero-shot")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _plot_confusion(results, model, path) -> bool:
    import matplotlib.pyplot as plt

    res = results[model].get("chexpert5x200", {})
    if "zeroshot_confusion" not in res:
        return False
    cm = np.asarray(res["zeroshot_confusion"], dtype=float)
    names = list(res.get("zeroshot_per_class", {}).keys()) or [str(i) for i in range(len(cm))]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, int(v), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{model}: 5x200 zero-shot (acc {res['zeroshot_acc']:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _plot_examples(results, model, path) -> bool:
    import matplotlib.pyplot as plt

    ex = results[model].get("heldout", {}).get("examples")
    if not ex:
        return False
    fig, axes = plt.subplots(len(ex), 1, figsize=(9, 1.6 * len(ex)))
    for ax, e in zip(np.atleast_1d(axes), ex):
        ax.axis("off")
        lines = [f"query {e['image_id'][:17]}  true: {e['true_text'][:90]}"]
        lines += [f"{'*' if r['correct'] else ' '} {r['score']:+.3f}  {r['text'][:95]}" for r in e["retrieved"]]
        ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=7)
    fig.suptitle(f"{model}: held-out image-to-text top-3 (* = the study's own report)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_plots(results: dict[str, dict], out_dir: Path) -> list[Path]:
    """Write every plot the results allow; return the written paths (atomically, via temp files)."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def emit(name, fn, *args):
        dest = out_dir / name
        with io.atomic_path(dest, suffix=".png") as tmp:
            ok = fn(*args, tmp)
        if ok:
            written.append(dest)
        elif dest.exists() and dest.stat().st_size == 0:
            dest.unlink()

    emit("chexpert5x200_i2t.png", _plot_precision_bars, results, "chexpert5x200", "i2t")
    emit("chexpert8x200_t2i.png", _plot_precision_bars, results, "chexpert8x200", "t2i")
    emit("chexpert8x200_i2i.png", _plot_precision_bars, results, "chexpert8x200", "i2i")
    emit("rsna_roc.png", _plot_roc, results)
    for m in results:
        emit(f"confusion_{m}.png", _plot_confusion, results, m)
        emit(f"retrieval_examples_{m}.png", _plot_examples, results, m)
    return written


def _models_section(results: dict[str, dict]) -> list[str]:
    """Each model's checkpoint (sha256, size) and recipe, with every setting that is not the published method."""
    lines = ["## Models", ""]
    for name, benches in results.items():
        m = next((r["model"] for r in benches.values() if isinstance(r, dict) and "model" in r), None)
        if m is None:
            continue
        size = f", {m['checkpoint_bytes']:,} bytes" if "checkpoint_bytes" in m else ""
        lines.append(f"- **{name}**: `{m.get('checkpoint')}` (sha256 `{m.get('checkpoint_sha256', '')[:16]}…`{size}); "
                     f"recipe {m.get('recipe', 'unknown')}")
        diff = m.get("recipe_differences")
        if diff:
            lines.append("  - not the published method: " + ", ".join(f"`{k}={v!r}`" for k, v in diff.items()))
        elif diff is not None:
            lines.append("  - the published method (no differences)")
        if m.get("note"):
            lines.append(f"  - {m['note']}")
    return lines + [""]


def _mean_sd(st: dict | None) -> str:
    if not st:
        return ""
    return f"{st['mean']:.4f}" + ("" if st["sd"] is None else f" ± {st['sd']:.4f}")


def _spread_rows(spread: dict, bench: str, keys: list[str]) -> list[str]:
    """Markdown rows ``<model> mean ± sd (n seeds)`` under the per-seed rows of one benchmark table."""
    lines = []
    for kind, rec in spread.items():
        table = rec["benchmarks"].get(bench, {})
        cells = [f"**{kind}** mean ± sd ({len(rec['seeds'])} seeds)"] + [_mean_sd(table.get(k)) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _finding_table(results: dict[str, dict], spread: dict) -> list[str]:
    """Per-finding AUROC of the multi-label protocol: one row per finding, one column per model."""
    models = [m for m in results if "auroc_macro" in results[m].get("multilabel", {})]
    if not models:
        return []
    first = results[models[0]]["multilabel"]
    findings = [k.split("/", 1)[1] for k in first if k.startswith("auroc/")]
    cols = models + [f"{k} mean ± sd" for k in spread if "multilabel" in spread[k]["benchmarks"]]
    lines = ["| finding | positives / negatives | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for f in findings:
        c = first["counts"][f]
        cells = [f, f"{c['pos']} / {c['neg']}"]
        cells += ["undefined" if results[m]["multilabel"].get(f"auroc/{f}") is None
                  else f"{results[m]['multilabel'][f'auroc/{f}']:.4f}" for m in models]
        cells += [_mean_sd(spread[k]["benchmarks"]["multilabel"].get(f"auroc/{f}"))
                  for k in spread if "multilabel" in spread[k]["benchmarks"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for f, why in first.get("auroc_undefined", {}).items():
        lines.append(f"- {f}: AUROC {why}; left out of the macro mean")
    return lines


def markdown_report(results: dict[str, dict], table: pd.DataFrame, plots: list[Path],
                    headline: dict[str, list[str]], spread: dict | None = None) -> str:
    """The human-readable report: per-benchmark tables, skipped benchmarks with reasons, protocol notes, plots.

    With ``spread``, every table has each seed's row and, beside them, the model's mean ± sd over its seeds."""
    spread = spread or {}
    lines = ["# alta evaluation", ""] + _models_section(results)
    if spread:
        for kind, rec in spread.items():
            rows = ", ".join(rec["labels"].values())
            lines.append(f"- {kind}: {len(rec['seeds'])} seeds {rec['seeds']} (rows {rows}); "
                         "mean ± sample sd over seeds (spread.json)")
        lines.append("")
    for bench, keys in headline.items():
        cols = [c for c in table.columns if c.startswith(bench + ".")]
        table_rows = table[~table["model"].str.endswith((" (mean)", " (sd)"))]
        skipped = {m: r[bench]["skipped"] for m, r in results.items() if "skipped" in r.get(bench, {})}
        lines += [f"## {bench}", ""]
        if cols:
            sub = table_rows[["model", *cols]].rename(columns={c: c.split(".", 1)[1] for c in cols})
            lines += ["| " + " | ".join(sub.columns) + " |", "|" + "---|" * len(sub.columns)]
            for _, row in sub.iterrows():
                cells = [row["model"]] + [("" if pd.isna(v) else f"{v:.4f}") for v in row.iloc[1:]]
                lines.append("| " + " | ".join(cells) + " |")
            lines += _spread_rows(spread, bench, [c.split(".", 1)[1] for c in cols])
            lines.append("")
        for m, why in skipped.items():
            lines.append(f"- {m}: skipped ({why})")
        if bench == "rsna" and cols:
            lines.append("- `acc_cv10`/`f1_cv10`: ALTA protocol (threshold tuned on test folds, transductive); "
                         "`@0.5` is pure zero-shot, `@val` uses a threshold tuned on RSNA-val.")
        if bench == "heldout" and cols:
            any_res = next((r[bench] for r in results.values() if "n_studies" in r.get(bench, {})), None)
            if any_res:
                n = any_res["pool_size"]
                lines.append(f"- pool: {any_res['n_studies']} studies, {any_res['n_unique_texts']} unique texts; "
                             f"`_of_{n}` = over a pool of {n} candidates (R@K depends on the pool size); "
                             f"chance R@5 = {any_res[f'chance_R@5_of_{n}']:.4f}; ties pessimistic.")
        if bench == "chexpert5x200" and cols:
            lines.append("- `zeroshot_auroc_macro`: macro one-vs-rest AUROC of each class's prompt score.")
        if bench == "multilabel" and cols:
            lines += ["- positive vs negative prompt per finding, p = softmax over the pair; AUROC per finding over "
                      "the images labelled for it; `auroc_macro` averages the findings where it is defined.", ""]
            lines += _finding_table(results, spread)
        lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    return "\n".join(lines)
