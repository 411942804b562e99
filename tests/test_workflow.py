"""The Snakefile end to end on the demo: outputs, counts, MLflow nesting and the registered model, privacy,
idempotent reruns, the Snakemake report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import planned_jobs, snakemake

from alta import tracking

pytestmark = pytest.mark.slow


def png_chunk_types(data: bytes) -> set[bytes]:
    """Chunk types of a PNG, walked by their lengths (searching the bytes could match compressed pixel data)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    types, pos = set(), 8
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        types.add(data[pos + 4:pos + 8])
        pos += 12 + length
    return types


def test_outputs_and_counts(demo_workflow):
    work, _ = demo_workflow
    res = work / "results"
    for rel in ["extract/images.parquet", "extract/rejects.parquet", "sections/sections.parquet",
                "pair/pairs.parquet", "pair/pairs_stats.json", "pair/train.csv", "mrm/checkpoint.pt",
                "align/checkpoint.pt", "evaluate/report.md", "evaluate/comparison.csv"]:
        assert (res / rel).exists(), rel
    n_dicoms = len(list((res / "demo_data" / "files").rglob("*.dcm")))
    images = pd.read_parquet(res / "extract" / "images.parquet")
    rejects = pd.read_parquet(res / "extract" / "rejects.parquet")
    assert len(images) + len(rejects) == n_dicoms
    pairs = pd.read_parquet(res / "pair" / "pairs.parquet")
    dropped = pd.read_parquet(res / "pair" / "dropped.parquet")
    assert len(pairs) + len(dropped) == len(images)
    assert pairs["cl_path"].notna().any() and pairs["pf_path"].notna().any() and pairs["pl_path"].notna().any()


def test_mlflow_parent_and_children(demo_workflow, mlflow_uri):
    work, _ = demo_workflow
    client = tracking._client(mlflow_uri)
    exp = client.get_experiment_by_name(f"test-{work.name}")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    parents = [r for r in runs if r.data.tags.get("alta.kind") == "workflow"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    stages = {r.data.tags["alta.stage"] for r in children}
    assert {"extract", "sections", "pair", "mrm", "align", "evaluate"} <= stages
    assert all(r.info.status == "FINISHED" for r in children)
    assert parents[0].info.status == "FINISHED"


def test_no_planted_phi_anywhere(demo_workflow, mlflow_uri):
    work, _ = demo_workflow
    truth = json.loads((work / "results" / "demo_data" / "demo_truth.json").read_text())
    phi = [p.encode() for p in truth["planted_phi"] if len(p) >= 6]
    assert phi
    demo_root = work / "results" / "demo_data"
    checked = 0
    # Raw pixel buffers (store.u8, PNG image data) are not text: mid-grey runs such as 50,49,49,49 are ASCII
    # digits and can spell a planted date by chance. PNGs are checked to carry no text chunks at all instead.
    files = [p for p in (work / "results").rglob("*") if p.is_file() and demo_root not in p.parents
             and p.suffix not in (".u8", ".png")]
    for png in (work / "results" / "extract" / "png").rglob("*.png"):
        assert png_chunk_types(png.read_bytes()) <= {b"IHDR", b"IDAT", b"IEND"}, png
    files += [p for p in (work / "logs").rglob("*") if p.is_file()]
    files += [Path(mlflow_uri[len("sqlite:///"):])]
    files += [p for p in (work / "mlruns").rglob("*") if p.is_file()] if (work / "mlruns").exists() else []
    for p in files:
        data = p.read_bytes()
        for value in phi:
            assert value not in data, f"planted PHI {value!r} found in {p}"
        checked += 1
    assert checked > 20


def test_second_run_has_nothing_to_do(demo_workflow):
    work, _ = demo_workflow
    assert planned_jobs(work, "all") == {}


def test_registered_model_reproduces_the_checkpoint(demo_workflow, mlflow_uri, tmp_path):
    from alta.evaluate import embed

    work, _ = demo_workflow
    res = work / "results"
    rec = json.loads((res / "register" / "registered_model.json").read_text())
    client = tracking._client(mlflow_uri)
    mv = client.get_model_version(rec["name"], str(rec["version"]))
    assert rec["uri"] == f"models:/{rec['name']}/{rec['version']}" and mv.run_id == rec["run_id"]
    run = client.get_run(rec["run_id"])
    assert run.data.tags["alta.stage"] == "register_model" and run.info.status == "FINISHED"
    dicoms = sorted((res / "demo_data" / "files").rglob("*.dcm"))[:3]
    args = ["--images", *map(str, dicoms), "--texts", "Small left effusion.", "No acute process."]
    assert embed.main(["embed", "--model", rec["uri"], "--tracking-uri", mlflow_uri, *args,
                       "--out", str(tmp_path / "model.parquet")]) == 0
    assert embed.main(["embed", "--checkpoint", str(res / "align" / "checkpoint.pt"), "--tokenizer",
                       str(res / "align" / "tokenizer"), *args, "--out", str(tmp_path / "ckpt.parquet")]) == 0
    a, b = (pd.read_parquet(tmp_path / f"{n}.parquet") for n in ("model", "ckpt"))
    assert len(a) == 5 and (a["embedding"].map(list) == b["embedding"].map(list)).all()


def test_parent_provenance_and_effective_model_options(demo_workflow, mlflow_uri):
    work, _ = demo_workflow
    client = tracking._client(mlflow_uri)
    exp = client.get_experiment_by_name(f"test-{work.name}")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    parent = next(r for r in runs if r.data.tags.get("alta.kind") == "workflow")
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "provenance")}
    assert {"provenance/config.yaml", "provenance/git.txt", "provenance/packages.txt"} <= names
    align = next(r for r in runs if r.data.tags.get("alta.stage") == "align")
    params = align.data.params
    assert params["effective.model_options.image_pooling"] == "patch_grid"  # config.yaml's align.model_options
    assert params["effective.model_config.img_size"] and "effective.model_options.inference_view_loss" in params


def _report_object(html: str, name: str):
    """A JSON object the report's page script assigns (``var results = {...};``; bundled libraries declare
    variables of the same names earlier, so the last assignment of an object literal is the data)."""
    start = html.rindex(f"var {name} = {{") + len(f"var {name} = ")
    return json.JSONDecoder().raw_decode(html[start:])[0]


def test_snakemake_report_holds_tables_plots_curves_and_benchmarks(demo_workflow):
    import base64

    work, _ = demo_workflow
    snakemake(work, "--report", str(work / "report.html"))
    html = (work / "report.html").read_text()
    categories, results = _report_object(html, "categories"), _report_object(html, "results")
    assert sorted(categories) == ["1. Data", "2. Training", "3. Evaluation", "4. Stage benchmarks"]
    assert set(categories["1. Data"]) == {"Pairing coverage", "Rejects by reason"}
    assert set(categories["2. Training"]) == {"text_pretrain", "mrm", "align"}
    assert set(categories["3. Evaluation"]) == {"Tables", "Plots"}
    plots = {Path(p).name for p in categories["3. Evaluation"]["Plots"]}
    assert {"rsna_roc.png", "chexpert5x200_i2t.png"} <= plots
    assert len(plots) == len(list((work / "results" / "evaluate" / "plots").glob("*.png")))

    def content(rel: str) -> bytes:
        return base64.b64decode(results[rel]["data_uri"].split("base64,", 1)[1])

    res = work / "results"
    for rel in ["results/report/pairing_coverage.csv", "results/report/rejects_by_reason.csv",
                "results/report/stage_benchmarks.csv", "results/evaluate/comparison.csv"]:
        assert content(rel) == (work / rel).read_bytes(), rel
    for stage in ("text_pretrain", "mrm", "align"):
        assert content(f"results/{stage}/loss_curve.png")[:8] == b"\x89PNG\r\n\x1a\n"
    rejects = pd.read_csv(res / "report" / "rejects_by_reason.csv")
    dropped = pd.read_parquet(res / "pair" / "dropped.parquet")
    assert rejects.loc[rejects["stage"] == "pair", "count"].sum() == len(dropped)
    coverage = pd.read_csv(res / "report" / "pairing_coverage.csv").set_index("measure")["value"]
    assert coverage["rows"] == len(pd.read_parquet(res / "pair" / "pairs.parquet"))
    bench = pd.read_csv(res / "report" / "stage_benchmarks.csv")
    assert {"demo_data", "extract", "pair", "mrm", "align", "evaluate", "register"} <= set(bench["rule"])
    assert (bench["wall_s"] > 0).all()


def test_changed_evaluate_config_reruns_only_evaluate(demo_workflow):
    work, _ = demo_workflow
    cfg = (work / "config.yaml").read_text().replace("batch_size: 64", "batch_size: 32")
    alt = work / "config_eval.yaml"
    alt.write_text(cfg)
    jobs = planned_jobs(work, "all", "--configfile", str(alt))
    assert jobs == {"evaluate": 1, "report_tables": 1}  # the report's tables follow the evaluation


def test_demo_writes_the_newer_protocols(demo_workflow):
    """`all` on the demo runs the multi-label AUROC protocol, the 5x200 AUROC and pool-named held-out metrics."""
    work, _ = demo_workflow
    metrics = work / "results" / "evaluate" / "metrics"
    truth = json.loads((work / "results" / "demo_data" / "demo_truth.json").read_text())["benchmarks"]
    for model in ("mrm", "align"):
        ml = json.loads((metrics / model / "multilabel.json").read_text())
        assert ml["n_images"] == truth["multilabel"]["images"] == 8 * 6
        assert ml["n_findings_defined"] == len(truth["multilabel"]["findings"]) and 0 <= ml["auroc_macro"] <= 1
        assert 0 <= json.loads((metrics / model / "chexpert5x200.json").read_text())["zeroshot_auroc_macro"] <= 1
        held = json.loads((metrics / model / "heldout.json").read_text())
        assert f"i2t_R@1_of_{held['pool_size']}" in held
    assert "## multilabel" in (work / "results" / "evaluate" / "report.md").read_text()


def test_align_seeds_plan_one_job_per_seed(demo_workflow):
    """align.seeds: three seeds are three align jobs (results/align/seed<N>/), one evaluate and the jobs after it
    (the first seed's model is registered; the report tables follow evaluate); the single-seed outputs of the
    finished run stay valid (nothing upstream reruns)."""
    work, _ = demo_workflow
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg["align"]["seeds"] = [0, 1, 2]
    alt = work / "config_seeds.yaml"
    alt.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert planned_jobs(work, "all", "--configfile", str(alt)) == {"align": 3, "evaluate": 1, "register_model": 1,
                                                                   "report_tables": 1}
    out = snakemake(work, "-n", "-p", "all", "--configfile", str(alt)).stdout
    for seed in (0, 1, 2):
        assert f"results/align/seed{seed}/checkpoint.pt" in out and f"--seed {seed}" in out
        assert f"--model align@{seed}=results/align/seed{seed}/checkpoint.pt" in out


def test_changed_report_reruns_text_side_only(demo_workflow):
    work, _ = demo_workflow
    report = sorted((work / "results" / "demo_data" / "files").rglob("s*.txt"))[0]
    # a content change: Snakemake compares checksums of small inputs, so a bare `touch` is (rightly) not a change
    report.write_text(report.read_text() + " Addendum: the findings were discussed with the team.\n")
    jobs = planned_jobs(work, "all")
    assert "sections" in jobs and "pair" in jobs and "align" in jobs and "evaluate" in jobs
    assert not any(j.startswith("extract") for j in jobs)
    assert "demo_data" not in jobs
