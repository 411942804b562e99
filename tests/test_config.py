"""Configuration faults (issue 6): every kind of schema violation is one line naming the key, both from
``alta config`` and from Snakemake (the Snakefile validates at parse time), with no Python traceback; configured
input paths that do not exist are named before any work starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alta import cli

REPO = Path(__file__).resolve().parents[1]


def _base() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def _set(cfg: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        cfg = cfg[p]
    cfg[last] = value


def _delete(cfg: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        cfg = cfg[p]
    del cfg[last]


# (case, mutation, expected error line fragments: the dotted key first). Only the data-side sections are mutated:
# they are stable, while the training sections' keys belong to the trainer.
CASES = {
    "wrong_type": (lambda c: _set(c, "extract.workers", "two"), ["extract.workers", "'two'", "integer"]),
    "wrong_type_nested_bool": (lambda c: _set(c, "demo.enabled", "yes"), ["demo.enabled", "'yes'", "boolean"]),
    "unknown_top_level": (lambda c: _set(c, "trainer", {"lr": 1}), ["trainer", "unknown key"]),
    "unknown_nested": (lambda c: _set(c, "extract.worker", 2), ["extract.worker", "unknown key", "workers"]),
    "enum": (lambda c: _set(c, "extract.render", "fancy"), ["extract.render", "'fancy'", "mimic_jpg"]),
    "enum_nested_source": (lambda c: _set(c, "data.source", "pacs"), ["data.source", "'pacs'", "manifest"]),
    "below_minimum": (lambda c: _set(c, "extract.workers", 0), ["extract.workers", "minimum"]),
    "missing_section": (lambda c: _delete(c, "mlflow"), ["'mlflow'", "required"]),
    "missing_nested_key": (lambda c: _delete(c, "data.source"), ["data", "'source'", "required"]),
    "repeated_seed": (lambda c: _set(c, "align.seeds", [0, 1, 0]), ["align.seeds", "non-unique"]),
    "multilabel_format": (lambda c: _set(c, "evaluate.multilabel_format", "nih"),
                          ["evaluate.multilabel_format", "'nih'", "chestxray14"]),
}


def _write(path: Path, mutate) -> Path:
    cfg = _base()
    mutate(cfg)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_alta_config_names_the_key(case, tmp_path, capsys):
    mutate, fragments = CASES[case]
    path = _write(tmp_path / "config.yaml", mutate)
    assert cli.main(["config", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"{path}: ")
    for f in fragments:
        assert f in err[0], (f, err[0])


def test_alta_config_accepts_the_shipped_config(capsys):
    assert cli.main(["config", str(REPO / "config.yaml")]) == 0
    assert capsys.readouterr().out.strip() == "OK"


def test_alta_config_unreadable_yaml(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extract: [unclosed\n")
    assert cli.main(["config", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "YAML" in err[0]


def _snakemake_dry_run(work: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--configfile",
           str(work / "config.yaml"), "--cores", "1", "-n"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=work, timeout=120)


@pytest.mark.parametrize("case", ["wrong_type", "unknown_top_level", "unknown_nested", "enum", "missing_section"])
def test_snakemake_rejects_bad_config_at_parse_time(case, tmp_path):
    mutate, fragments = CASES[case]
    _write(tmp_path / "config.yaml", mutate)
    proc = _snakemake_dry_run(tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [l for l in proc.stderr.splitlines() if l.startswith("config: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def test_missing_input_paths_named_before_any_work(tmp_path):
    bogus = tmp_path / "no" / "such" / "mimic"

    def mutate(c):
        c["demo"]["enabled"] = False
        c["data"]["root"] = str(bogus)
        c["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path}/mlflow.db"

    _write(tmp_path / "config.yaml", mutate)
    proc = _snakemake_dry_run(tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"config: data.root: path does not exist: {bogus}" in proc.stderr.splitlines()
    # a real run stops at the same point: no job, no output, no tracking database
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--configfile",
           str(tmp_path / "config.yaml"), "--cores", "1", "data"]
    real = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert real.returncode != 0 and "data.root" in real.stderr and "Traceback" not in real.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()
    assert cli.main(["config", str(tmp_path / "config.yaml"), "--check-paths"]) == 1
