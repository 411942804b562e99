"""The path of a researcher with real data: their own config given with --configfile gets the published recipe,
every config or manifest mistake is one line before anything runs, shipped configs are the paper's settings,
released weights load as data, and the stages say what they drop and what keeps it."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, SHARED_DATA, covid_manifest, planned_jobs

from alta import cli, config, recipes

DEMO_SWITCHES = {"inference_view_loss", "image_pooling", "text_pooling", "exclude_missing_views"}


def _default() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def _merged(user: dict) -> dict:
    """What Snakemake sees for `--configfile user.yaml`: the default config.yaml with the user's keys merged in,
    nested sections key by key."""
    def merge(a, b):
        return {**a, **{k: merge(a[k], v) if isinstance(a.get(k), dict) and isinstance(v, dict) else v
                        for k, v in b.items()}}
    return merge(_default(), user)


# ---------------------------------------------------------------------------------------------- recipes --------
def test_real_data_gets_the_published_recipe_and_cannot_inherit_the_demos():
    user = {"demo": {"enabled": False}, "align": {"model_options": {}, "model_overrides": {}}}
    cfg = config.resolve_recipe(_merged(user))
    assert cfg["recipe"] == "published"
    for stage in ("mrm", "align"):
        assert recipes.differences(stage, cfg[stage]) == {}, stage
    assert cfg["align"]["preset"] == "vit_base" and cfg["align"]["batch_size"] == 96
    assert cfg["align"]["model_options"] == {} and cfg["align"]["augment"] is True
    assert cfg["mrm"]["batch_size"] == 256 and cfg["mrm"]["max_epochs"] == 200


def test_demo_recipe_and_user_keys_win_over_it():
    demo = config.resolve_recipe(_merged({}))
    assert demo["recipe"] == "demo" and DEMO_SWITCHES <= set(demo["align"]["model_options"])
    diff = recipes.differences("align", demo["align"])
    assert {"preset", "model_options.inference_view_loss", "model_overrides.mask_ratio", "augment"} <= set(diff)
    assert diff["model_options.image_pooling"] == {"value": "patch_grid", "published": "cls"}
    # a scalar choice overrides the nested demo settings completely ...
    pub = config.resolve_recipe(_merged({"recipe": "published"}))
    assert pub["align"]["model_options"] == {} and pub["align"]["preset"] == "vit_base"
    # ... and a key set by the user wins over any recipe
    mine = config.resolve_recipe(_merged({"demo": {"enabled": False}, "align": {"batch_size": 48,
                                                                              "model_options": {"text_pooling": "token_mean"}}}))
    assert mine["align"]["batch_size"] == 48
    assert recipes.differences("align", mine["align"]) == {
        "batch_size": {"value": 48, "published": 96},
        "model_options.text_pooling": {"value": "token_mean", "published": "cls"}}


def test_the_workflow_seed_reaches_every_training_stage_unless_a_section_sets_its_own():
    cfg = config.resolve_recipe(_merged({"seed": 7, "mrm": {"seed": 3}}))
    assert (cfg["text_pretrain"]["seed"], cfg["mrm"]["seed"], cfg["align"]["seed"]) == (7, 3, 7)


def test_stage_defaults_are_the_published_recipe():
    from alta.train import align, mrm

    for stage, defaults in (("mrm", mrm.DEFAULTS), ("align", align.DEFAULTS)):
        assert {k: v for k, v in defaults.items() if k != "recipe"} == recipes.defaults(stage)
        assert recipes.differences(stage, defaults) == {}


# ---------------------------------------------------------------------------------------------- config ---------
TYPOS = {
    "align.model_options.image_poolng": ("align.model_options.image_pooling", lambda c: c["align"].update(
        model_options={"image_poolng": "cls"})),
    "align.model_overrides.mask_ration": ("align.model_overrides.mask_ratio", lambda c: c["align"].update(
        model_overrides={"mask_ration": 0.5})),
    "mrm.blrr": ("mrm.blr", lambda c: c["mrm"].update(blrr=1e-4)),
    "evaluate.heldout_splt": ("evaluate.heldout_split", lambda c: c["evaluate"].update(heldout_splt="test")),
}


@pytest.mark.parametrize("key", sorted(TYPOS))
def test_every_key_typo_is_one_line_with_the_nearest_name(key, tmp_path, capsys):
    nearest, mutate = TYPOS[key]
    cfg = _default()
    mutate(cfg)
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["config", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{path}: {key}: unknown key (did you mean {nearest}?"), err


def test_invalid_option_values_are_named_before_anything_runs(tmp_path, capsys):
    cfg = _default()
    cfg["align"]["model_options"] = {"image_pooling": "mean"}
    cfg["align"]["model_overrides"] = {"mask_ratio": 1.5}
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["config", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{path}: align.model_options.image_pooling: must be 'cls', 'patch_mean' or 'patch_grid', got 'mean'",
                   f"{path}: align.model_overrides.mask_ratio: must be in [0, 1), got 1.5"]


def _manifest_config(tmp_path: Path, manifest: Path) -> Path:
    cfg = _default()
    cfg["demo"]["enabled"] = False
    cfg["data"].update(source="manifest", root=None, manifest=str(manifest))
    for k in ("chexpert_5x200", "chexpert_root", "convirt_root", "rsna_root", "rsna_test_list", "rsna_val_list",
              "multilabel_list", "multilabel_root"):
        cfg["evaluate"][k] = None
    cfg["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path}/mlflow.db"
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_manifest_columns_are_checked_with_the_config(tmp_path, capsys):
    bad = pd.DataFrame({"subject_id": ["1"], "study_id": ["1_0"], "image_id": ["a"], "path": ["a.png"],
                        "view": ["PA"], "reprot_text": ["Clear lungs."]})
    bad.to_csv(tmp_path / "m.csv", index=False)
    path = _manifest_config(tmp_path, tmp_path / "m.csv")
    assert cli.main(["config", str(path)]) == 0  # the schema is fine ...
    capsys.readouterr()
    assert cli.main(["config", str(path), "--check-paths"]) == 1  # ... the manifest is not
    err = capsys.readouterr().err.strip().splitlines()
    m = tmp_path / "m.csv"
    assert err == [f"config: data.manifest: {m}: missing required column 'view_position' (found 'view': rename it)",
                   f"config: data.manifest: {m}: column 'reprot_text' is not a manifest column (did you mean "
                   "'report_text'?)",
                   f"config: data.manifest: {m}: needs a 'report_text' or a 'report_path' column: the sections "
                   "stage reads the reports from it"]


def _dry_run(work: Path, *configs: Path, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--cores", "1", "-n",
           "--printshellcmds", *extra]
    for c in configs:
        cmd += ["--configfile", str(c)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=work, timeout=300)


@pytest.mark.slow
def test_snakemake_names_a_manifest_problem_in_one_line(tmp_path):
    pd.DataFrame({"subject_id": ["1"], "study_id": ["1_0"], "image_id": ["a"], "path": ["a.png"],
                  "report_text": ["Clear lungs."]}).to_csv(tmp_path / "m.csv", index=False)
    (tmp_path / "config.yaml").write_text((REPO / "config.yaml").read_text())
    proc = _dry_run(tmp_path, _manifest_config(tmp_path, tmp_path / "m.csv"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "Exception" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("config: ")]
    assert lines == [f"config: data.manifest: {tmp_path / 'm.csv'}: missing required column 'view_position'"]


@pytest.mark.slow
def test_user_config_plans_the_published_align_job(tmp_path):
    """`snakemake --configfile user.yaml` beside the demo's config.yaml: the planned align job carries the published
    settings, every one of them, and none of the demo's switches."""
    base = SHARED_DATA / "covid-chestxray"
    if not (base / "metadata.csv").exists():
        pytest.skip(f"shared data not available: {base}")
    covid_manifest(base, tmp_path / "manifest.csv")
    (tmp_path / "config.yaml").write_text((REPO / "config.yaml").read_text())
    weights = tmp_path / "MRM.pth"
    weights.write_bytes(b"checked by align, not by the plan")
    user = tmp_path / "user.yaml"
    user.write_text(yaml.safe_dump({
        "demo": {"enabled": False},
        "data": {"source": "manifest", "root": None, "manifest": str(tmp_path / "manifest.csv")},
        "mrm": {"weights": str(weights)}, "align": {"model_options": {}, "model_overrides": {}},
        "evaluate": {k: None for k in ("chexpert_5x200", "chexpert_root", "convirt_root", "rsna_root",
                                       "rsna_test_list", "rsna_val_list", "multilabel_list", "multilabel_root")},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "user"}}))
    proc = _dry_run(tmp_path, user, extra=("align",))
    assert proc.returncode == 0, proc.stderr[-3000:]
    cmd = next(line for line in proc.stdout.splitlines() if "-m alta.train.align" in line)
    settings = json.loads(shlex.split(cmd.split("--config-json", 1)[1])[0])
    assert settings["recipe"] == "published"
    assert recipes.differences("align", settings) == {}
    assert not DEMO_SWITCHES & set(settings["model_options"]) and settings["preset"] == "vit_base"
    assert "mrm" not in re.findall(r"rule (\w+):", proc.stdout)  # mrm.weights skips MRM pretraining


# ---------------------------------------------------------------------------------------------- shipped configs -
@pytest.mark.parametrize("name", ["mimic_cxr.yaml", "mimic_cxr_jpg.yaml", "manifest.yaml"])
def test_shipped_configs_are_complete_and_the_published_method(name):
    path = REPO / "config" / name
    cfg = config.load(path)  # schema and every nested key, on the file alone: nothing comes from config.yaml
    assert cfg["demo"]["enabled"] is False and cfg["recipe"] == "published"
    assert cfg["mrm"]["weights"].endswith("MRM.pth") and cfg["align"]["text_dir"] and cfg["tokenizer"]["path"]
    resolved = config.resolve_recipe(cfg)
    for stage in ("mrm", "align"):
        assert recipes.differences(stage, resolved[stage]) == {}, (name, stage)
    assert (resolved["align"]["preset"], resolved["align"]["batch_size"], resolved["align"]["max_epochs"]) == \
        ("vit_base", 96, 30)
    assert f"--configfile config/{name}" in path.read_text()
    assert f"--configfile config/{name}" in (REPO / "README.md").read_text()
    assert set(config.input_paths(cfg)) >= {"mrm.weights", "align.text_dir", "tokenizer.path",
                                             "evaluate.chexpert_5x200", "evaluate.rsna_test_list"}


# ---------------------------------------------------------------------------------------------- weights ---------
class _Hook:
    """Stands for code a downloaded checkpoint could carry: unpickling it would construct this class."""


def test_align_refuses_a_weights_file_that_holds_code_unless_trusted(tmp_path, caplog):
    from alta.models.build import build_mrm
    from alta.train import align

    sd = build_mrm("tiny", vocab_size=50, pad_token_id=0, mask_token_id=3, cls_token_id=2).state_dict()
    evil = tmp_path / "MRM.pth"
    torch.save({"model": sd, "args": argparse.Namespace(lr=1.0), "extra": _Hook()}, evil)
    from alta.models.checkpoints import UntrustedCheckpoint, read_checkpoint

    with pytest.raises(UntrustedCheckpoint, match=r"MRM\.pth: refused to load: .*test_real_user\._Hook"):
        read_checkpoint(evil)
    args = align.parser().parse_args(["--pairs", "p", "--images", "i", "--extract-dir", "e", "--tokenizer", "t",
                                      "--out", "o", "--mrm-weights", str(evil)])
    assert args.trust_checkpoint is False
    assert align.parser().parse_args(["--pairs", "p", "--images", "i", "--extract-dir", "e", "--tokenizer", "t",
                                      "--out", "o", "--trust-checkpoint"]).trust_checkpoint is True


def test_weight_files_records_sha256_and_size(tmp_path):
    from alta import io
    from alta.train.stage import weight_files

    (tmp_path / "MRM.pth").write_bytes(b"x" * 1000)
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "model.safetensors").write_bytes(b"y" * 10)
    (tmp_path / "bert" / "config.json").write_text("{}")
    got = weight_files(mrm_weights=tmp_path / "MRM.pth", text_dir=tmp_path / "bert", none="none")
    assert got == {"mrm_weights_sha256": io.sha256_file(tmp_path / "MRM.pth"), "mrm_weights_bytes": 1000,
                   "text_dir.model.safetensors_sha256": io.sha256_file(tmp_path / "bert" / "model.safetensors"),
                   "text_dir.model.safetensors_bytes": 10}


# ---------------------------------------------------------------------------------------------- small fixes -----
def test_param_groups_follow_the_models_own_options():
    from alta.models.build import build_alta, param_groups

    ids = dict(pad=0, cls=2, sep=3, mask=4)
    for exempt in (True, False):
        model = build_alta("tiny", vocab_size=60, special_ids=ids, options={"exempt_embeddings_from_decay": exempt})
        model.cls_token.requires_grad_(True)
        no_decay = {id(p) for p in param_groups(model, mode="recommended")[1]["params"]}
        assert (id(model.cls_token) in no_decay) is exempt


def test_tokenizer_trains_on_the_training_split_only(tmp_path):
    from alta.train.tokenizer import load_tokenizer, main

    rows = [("train", f"clear lungs no effusion case {i}") for i in range(30)]
    rows += [("test", "zygomaticotemporal xylophonist quixotically")] * 5
    pd.DataFrame({"split": [s for s, _ in rows], "text": [t for _, t in rows]}).to_parquet(tmp_path / "p.parquet")
    assert main(["--texts", str(tmp_path / "p.parquet"), "--out", str(tmp_path / "tok"), "--vocab-size", "200"]) == 0
    vocab = load_tokenizer(tmp_path / "tok").get_vocab()
    assert "lungs" in vocab and not any(w in vocab for w in ("zygomaticotemporal", "xylophonist", "##phonist"))
    stats = json.loads((tmp_path / "tok" / "tokenizer_stats.json").read_text())
    assert stats["rows_in"] == 35 and stats["rows"] == 30 and stats["split"] == "train"


def _headerless_manifest(tmp_path: Path, duplicate: bool = False) -> Path:
    rows = []
    for i in range(6):
        rows.append({"subject_id": f"p{i}", "study_id": f"p{i}_s0", "image_id": f"p{i}_f", "path": f"p{i}_f.png",
                     "view_position": "PA", "study_date": "20200101",
                     "report_text": f"Opacity in the right lower lobe, case {i}, likely pneumonia."})
    if duplicate:
        rows.append({**rows[0], "path": "other.png"})
    path = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_pair_on_headerless_reports_says_what_keeps_them_and_auto_keeps_them(tmp_path, caplog):
    from alta import io
    from alta.data.pair import main

    m = _headerless_manifest(tmp_path)
    with caplog.at_level("WARNING", logger="alta.data.pair"):
        assert main(["--manifest", str(m), "--out", str(tmp_path / "a"), "--export-splits", ""]) == 0
    stats = json.loads((tmp_path / "a" / "pairs_stats.json").read_text())
    assert stats["counts"]["rows"] == 0
    assert any("6 of 6 images dropped as no_report_text" in w and "text_source: auto" in w for w in stats["warnings"])
    assert "text_source: auto" in caplog.text
    assert main(["--manifest", str(m), "--out", str(tmp_path / "b"), "--export-splits", "", "--text-source",
                 "auto"]) == 0
    pairs = io.read_parquet(tmp_path / "b" / "pairs.parquet")
    assert len(pairs) == 6 and set(pairs["text_source"]) == {"full_report"}
    assert json.loads((tmp_path / "b" / "pairs_stats.json").read_text())["warnings"] == []


def test_pair_manifest_reports_duplicate_image_ids_and_goes_on(tmp_path):
    from alta import io
    from alta.data.pair import main

    m = _headerless_manifest(tmp_path, duplicate=True)
    assert main(["--manifest", str(m), "--out", str(tmp_path / "o"), "--export-splits", "", "--text-source",
                 "auto"]) == 0
    pairs = io.read_parquet(tmp_path / "o" / "pairs.parquet")
    dropped = io.read_parquet(tmp_path / "o" / "dropped.parquet")
    assert len(pairs) == 6 and dropped["reason"].tolist() == ["duplicate_image_id"]
    assert dropped["image_id"].tolist() == ["p0_f"] and len(pairs) + len(dropped) == 7
    assert pairs.set_index("dicom_id").loc["p0_f", "cf_path"] == "p0_f.png"  # the first row wins, as in extract


# ---------------------------------------------------------------------------------------------- released MRM.pth
def official_mrm_file(path: Path, encoder: str = "official") -> Path:
    """An MRM.pth in the released layout: ``{'model', 'optimizer', 'epoch', 'scaler', 'args'}`` with an argparse
    namespace, the decoder table built by the official code's construction (the encoder's as ``encoder`` says)."""
    from test_checkpoints import _with_tables

    from alta.models.build import build_mrm

    torch.manual_seed(0)
    sd = build_mrm("tiny", vocab_size=300, pad_token_id=0, mask_token_id=3, cls_token_id=2).state_dict()
    sd = _with_tables(sd, encoder, "official")
    torch.save({"model": sd, "optimizer": None, "epoch": 199, "scaler": {"scale": 65536.0},
                "args": argparse.Namespace(model="mrm", batch_size=32, blr=1.5e-4, mask_ratio=0.75,
                                           output_dir="./output_dir", norm_pix_loss=True)}, path)
    return path


def test_align_cli_starts_from_a_released_mrm_with_mae_encoder_and_official_decoder_tables(tmp_path, caplog):
    from test_data import build_synthetic

    from alta import io
    from alta.train import align
    from alta.train.tokenizer import train_tokenizer

    pairs, images, extract = build_synthetic(tmp_path)
    train_tokenizer(io.read_parquet(pairs)["text"].tolist(), tmp_path / "tok", vocab_size=300)
    weights = official_mrm_file(tmp_path / "MRM.pth", encoder="mae")
    cfg = {"preset": "tiny", "batch_size": 4, "num_workers": 0, "max_steps": 2, "log_every": 1, "val_max_rows": 4}
    with caplog.at_level("INFO"):
        assert align.main(["--pairs", str(pairs), "--images", str(images), "--extract-dir", str(extract),
                           "--tokenizer", str(tmp_path / "tok"), "--mrm-weights", str(weights), "--out",
                           str(tmp_path / "al"), "--config-json", json.dumps(cfg)]) == 0
    assert "pos_embed is the MAE sin-cos table" in caplog.text
    assert "decoder_pos_embed is the official-code (omega / D / 2.) sin-cos table" in caplog.text
    ck = torch.load(tmp_path / "al" / "checkpoint.pt", weights_only=True)
    src = torch.load(weights, weights_only=False)["model"]
    assert torch.equal(ck["model"]["decoder_pos_embed"], src["decoder_pos_embed"])  # kept as the file has it
    assert ck["recipe"] == "published" and "preset" in ck["recipe_differences"]
    assert re.search(r"step 2/2 \(epoch [\d.]+/[\d.]+\) loss [\d.]+ .*samples/s \| eta", caplog.text)


def _align_processes(work: Path) -> list:
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if "alta.train.align" in " ".join(p.info["cmdline"] or []) and p.info["cwd"] == str(work):
                out.append(p)
        except psutil.Error:
            pass
    return out


def _interrupt_during_align(work: Path) -> tuple[float, int]:
    """Start `snakemake all`, send SIGINT to Snakemake alone once align logs progress; return (seconds until no
    align process is left, Snakemake's exit code)."""
    import os
    import signal
    import time

    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--configfile",
           str(work / "config.yaml"), "--cores", "2", "all"]
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    log = work / "logs" / "align" / "align.log"
    deadline = time.time() + 1200
    while not (log.exists() and re.search(r"step \d+/40 ", log.read_text())):
        assert proc.poll() is None and time.time() < deadline, "align never logged progress"
        time.sleep(0.5)
    t0 = time.time()
    os.kill(proc.pid, signal.SIGINT)
    while _align_processes(work) and time.time() - t0 < 120:
        time.sleep(0.2)
    stopped = time.time() - t0
    return stopped, proc.wait(timeout=120)


@pytest.mark.slow
def test_workflow_starts_align_from_a_released_mrm_and_evaluates_it(tmp_path, mlflow_uri):
    """mrm.weights = a released-layout MRM.pth with the official code's tables: align starts from it (after a
    Ctrl-C that stops it within seconds and a rerun that resumes), and evaluate scores the MRM baseline built from
    it, with the file's sha256 and size recorded."""
    from conftest import demo_config, snakemake

    from alta import io, tracking

    weights = official_mrm_file(tmp_path / "MRM.pth")
    demo_config(tmp_path, mlflow_uri, mrm={"weights": str(weights)}, align={"max_steps": 40, "ckpt_every": 1000})
    stopped, rc = _interrupt_during_align(tmp_path)
    assert rc != 0 and stopped < 30, stopped  # Snakemake alone would wait for align to finish its 40 steps
    assert (tmp_path / "results" / "align" / "last.pt").exists()  # written by the signal handler, not periodically
    snakemake(tmp_path, "all")
    res = tmp_path / "results"
    log = (tmp_path / "logs" / "align" / "align.log").read_text()
    assert re.search(r"resumed from .*last\.pt at step [1-9]\d* of 40", log)
    assert not (res / "mrm" / "checkpoint.pt").exists()  # MRM pretraining skipped
    assert "pos_embed is the official-code (omega / D / 2.) sin-cos table" in log
    assert "recipe demo; differs from the published method" in log and "model_options.image_pooling" in log
    sha = io.sha256_file(weights)
    for bench in ("heldout", "rsna"):  # the MRM baseline was built from the file and scored
        model = json.loads((res / "evaluate" / "metrics" / "mrm" / f"{bench}.json").read_text())["model"]
        assert model["checkpoint_sha256"] == sha and model["checkpoint_bytes"] == weights.stat().st_size
    report = (res / "evaluate" / "report.md").read_text()
    assert f"sha256 `{sha[:16]}" in report and "recipe unknown (imported file)" in report
    assert "not the published method" in report and "model_options.inference_view_loss=True" in report
    client = tracking._client(mlflow_uri)
    exp = client.get_experiment_by_name(f"test-{tmp_path.name}")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    align_run = next(r for r in runs if r.data.tags.get("alta.stage") == "align")
    assert align_run.data.params["mrm_weights_sha256"] == sha
    assert align_run.data.params["mrm_weights_bytes"] == str(weights.stat().st_size)
    assert align_run.data.tags["alta.recipe"] == "demo"
    assert "model_options.image_pooling='patch_grid'" in align_run.data.tags["alta.recipe_differences"]


# ---------------------------------------------------------------------------------------------- manifest reruns -
@pytest.mark.slow
def test_a_report_edit_in_a_manifest_reruns_sections_onward_not_extraction(tmp_path, mlflow_uri):
    from conftest import snakemake

    base = SHARED_DATA / "covid-chestxray"
    if not (base / "metadata.csv").exists():
        pytest.skip(f"shared data not available: {base}")
    man = covid_manifest(base, tmp_path / "full.csv")
    man = man[man["subject_id"].isin(sorted(set(man["subject_id"]))[:12])].reset_index(drop=True)
    man.to_csv(tmp_path / "manifest.csv", index=False)
    cfg = yaml.safe_load(_manifest_config(tmp_path, tmp_path / "manifest.csv").read_text())
    cfg["extract"]["n_shards"] = 3
    cfg["sections"]["text_source"] = "auto"  # the covid notes are free text without section headers
    cfg["mlflow"].update(tracking_uri=mlflow_uri, experiment=f"test-{tmp_path.name}")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    def planned():  # `data` is the target rule, not a stage
        return {k: v for k, v in planned_jobs(tmp_path, "data").items() if k != "data"}

    snakemake(tmp_path, "data")
    assert planned() == {}
    pairs = pd.read_parquet(tmp_path / "results" / "pair" / "pairs.parquet")
    assert len(pairs) > 0 and set(pairs["text_source"]) <= {"full_report", "findings", "impression",
                                                              "findings+impression", "last_paragraph"}

    edited = man.copy()
    edited.loc[0, "report_text"] = str(edited.loc[0, "report_text"]) + " Follow-up recommended."
    edited.to_csv(tmp_path / "manifest.csv", index=False)
    assert planned() == {"sections": 1, "pair": 1}

    # an image column: exactly the shard holding that row re-extracts
    edited.loc[0, "view_position"] = "PA" if edited.loc[0, "view_position"] != "PA" else "AP"
    edited.to_csv(tmp_path / "manifest.csv", index=False)
    assert planned() == {"extract_shard": 1, "extract_merge": 1, "sections": 1, "pair": 1}
