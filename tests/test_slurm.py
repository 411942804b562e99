"""The demo workflow through `snakemake --profile slurm` on a real one-node Slurm cluster with a real MLflow server.

What runs: tests/slurm_harness.py starts munged + slurmctld + slurmd on localhost (no accounting, CPU-only node) and
`mlflow server`; Snakemake submits every rule with sbatch through the repository's Slurm profile. The README command
is `snakemake --profile slurm all` from the repository root, where the `slurm` link resolves to profiles/slurm; a test
cannot write results into the repository, so it runs the same profile, Snakefile and target with an explicit
working directory: `snakemake --profile <repo>/profiles/slurm --profile <work>/node -s <repo>/Snakefile -d <work>`.
The second profile holds only what this 2-CPU, GPU-less node needs: the per-rule resources without `gpu`, with
memory that fits. Every other setting (executor, squeue status, log folder, retries) comes from the real profile.

Skipped, never failed, when the machine cannot host the cluster (not root, slurm-wlm/munge missing, daemons down).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import slurm_harness as harness
from conftest import REPO, demo_config, snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PROFILE = REPO / "profiles" / "slurm"
TARGET = "data"
# rule -> the MLflow stage tag of its child run (rules without a run: demo_data, tokenizer)
STAGE_OF_RULE = {"extract_shard": "extract", "extract_merge": "extract", "sections": "sections", "pair": "pair",
                 "mrm": "mrm", "align": "align", "evaluate": "evaluate"}
DATA_RULES = ["demo_data", "extract_shard", "extract_merge", "sections", "pair"]
ALL_RULES = DATA_RULES + ["tokenizer", "mrm", "align", "evaluate"]
TRAIN = {"nproc": 2, "threads": 1}


# ---------------------------------------------------------------------------------------------- fixtures --------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        c = harness.start_cluster(tmp_path_factory.mktemp("slurm"))
    except harness.Unavailable as exc:
        pytest.skip(f"no throwaway Slurm cluster on this machine: {exc}")
    yield c
    c.stop()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    try:
        s = harness.start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    except harness.Unavailable as exc:
        pytest.skip(f"cannot start an MLflow server: {exc}")
    yield s
    s.stop()


def node_profile(work: Path, cluster: harness.SlurmCluster) -> Path:
    """The overlay profile: the repository profile's per-rule resources, made to fit a CPU-only 2-core node."""
    base = yaml.safe_load((PROFILE / "config.yaml").read_text())
    set_res = {}
    for rule, res in base.get("set-resources", {}).items():
        res = {k: v for k, v in res.items() if k not in ("gpu", "cpus_per_gpu", "slurm_partition")}
        res["mem_mb"] = 1500
        res["cpus_per_task"] = min(int(res.get("cpus_per_task", 1)), cluster.cpus)
        set_res[rule] = res
    for rule in ("mrm", "align"):
        # torchrun starts nproc CPU processes with gloo; ask Slurm for a core each
        set_res[rule].update(cpus_per_task=min(TRAIN["nproc"], cluster.cpus), mem_mb=3000)
    overlay = {
        "default-resources": {**base.get("default-resources", {}), "mem_mb": 1000, "cpus_per_task": 1},
        "set-resources": set_res,
        "set-threads": {r: min(int(n), cluster.cpus) for r, n in base.get("set-threads", {}).items()},
    }
    d = work / "node-profile"
    d.mkdir(exist_ok=True)
    (d / "config.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    return d


def slurm_snakemake(work: Path, cluster: harness.SlurmCluster, *args: str, wait: bool = True,
                    timeout: int = 900):
    """`snakemake --profile slurm` for ``work`` against ``cluster`` (Popen when ``wait`` is false)."""
    cmd = [sys.executable, "-m", "snakemake", *args, "--profile", str(PROFILE), "--profile",
           str(node_profile(work, cluster)), "-s", str(REPO / "Snakefile"), "-d", str(work),
           "--configfile", str(work / "config.yaml")]
    env = {**cluster.env, "PYTHONUNBUFFERED": "1"}
    if not wait:
        log = open(work / "snakemake.out", "w")
        return subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"snakemake --profile slurm {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stderr[-6000:]}\n{slurm_logs(work)}\n{cluster.logs(1500)}")
    return proc


def slurm_logs(work: Path, n: int = 1500) -> str:
    return "\n".join(f"--- {p.relative_to(work)}\n{p.read_text(errors='replace')[-n:]}"
                     for p in sorted((work / "logs").rglob("*.log")))


def slurm_jobs(work: Path) -> dict[str, list[str]]:
    """rule -> Slurm job ids, from the executor's logs/slurm/<rule>/<wildcards>/<jobid>.log files."""
    jobs: dict[str, list[str]] = {}
    for p in (work / "logs" / "slurm").rglob("*.log"):
        rule = p.relative_to(work / "logs" / "slurm").parts[0]
        jobs.setdefault(rule, []).append(p.stem)
    return jobs


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory, cluster, mlflow_server):
    work = tmp_path_factory.mktemp("slurm-work")
    demo_config(work, mlflow_server.url, mrm=TRAIN, align=TRAIN)
    t0 = time.monotonic()
    proc = slurm_snakemake(work, cluster, TARGET)
    return work, proc, time.monotonic() - t0


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, mlflow_uri):
    work = tmp_path_factory.mktemp("local-work")
    demo_config(work, mlflow_uri)
    snakemake(work, "data")
    return work


def server_runs(url: str, experiment: str) -> list[dict]:
    """All runs of ``experiment`` on the tracking server, read over its REST API."""
    def post(path: str, body: dict) -> dict:
        req = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name={experiment}",
                                timeout=30) as r:
        exp_id = json.loads(r.read())["experiment"]["experiment_id"]
    runs, token = [], None
    while True:
        page = post("runs/search", {"experiment_ids": [exp_id], "max_results": 1000,
                                    **({"page_token": token} if token else {})})
        runs += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            return runs


def tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


# ------------------------------------------------------------------------------------------------- tests --------
def test_every_rule_ran_as_a_slurm_job(slurm_run, cluster):
    work, proc, elapsed = slurm_run
    jobs = slurm_jobs(work)
    expected = ALL_RULES if TARGET == "all" else DATA_RULES
    assert sorted(jobs) == sorted(expected), f"Slurm logs per rule: {jobs}"
    n_shards = len(list((work / "results" / "extract" / "shards").iterdir()))
    assert len(jobs["extract_shard"]) == n_shards >= 2
    # nothing was retried: each rule (and shard) ran once, each Slurm log is the job's own (SLURM_JOB_ID matches)
    ids = [j for js in jobs.values() for j in js]
    assert len(ids) == len(set(ids)) == sum(1 for _ in (work / "logs" / "slurm").rglob("*.log"))
    # the executor's job-name and comment carry the rule; Slurm's own record of each job agrees
    for rule, js in jobs.items():
        for j in js:
            info = cluster.run("scontrol", "show", "job", j, check=False).stdout
            if info:  # MinJobAge keeps them for 5 minutes
                assert "JobState=COMPLETED" in info, info
                assert f"rule_{rule}" in info or rule in info, info
    print(f"slurm workflow `{TARGET}`: {len(ids)} Slurm jobs in {elapsed:.0f} s")


def test_data_outputs_identical_to_a_local_run(slurm_run, local_run):
    work, _, _ = slurm_run
    for rel in ("extract/images.parquet", "sections/sections.parquet", "pair/pairs.parquet"):
        a, b = work / "results" / rel, local_run / "results" / rel
        assert a.read_bytes() == b.read_bytes(), f"{rel} differs between the Slurm and the local run"
        assert len(pd.read_parquet(a)) > 0


def test_child_runs_under_one_parent_with_slurm_job_ids(slurm_run, mlflow_server):
    work, _, _ = slurm_run
    runs = server_runs(mlflow_server.url, f"test-{work.name}")
    parents = [r for r in runs if tags(r).get("alta.kind") == "workflow"]
    assert len(parents) == 1, [tags(r) for r in parents]
    parent = parents[0]["info"]["run_id"]
    assert parents[0]["info"]["status"] == "FINISHED"
    children = [r for r in runs if r is not parents[0]]
    assert children and all(tags(r).get("mlflow.parentRunId") == parent for r in children)
    jobs = slurm_jobs(work)
    stage_jobs = {}
    for r in children:
        t = tags(r)
        assert t["alta.slurm_job_id"] != "none", t
        stage_jobs.setdefault(t["alta.stage"], set()).add(t["alta.slurm_job_id"])
        assert r["info"]["status"] == "FINISHED", t
    expected = {STAGE_OF_RULE[r] for r in (ALL_RULES if TARGET == "all" else DATA_RULES) if r in STAGE_OF_RULE}
    assert set(stage_jobs) == expected
    for rule, stage in STAGE_OF_RULE.items():
        if stage in stage_jobs:
            rule_jobs = {j for r, js in jobs.items() if STAGE_OF_RULE.get(r) == stage for j in js}
            assert stage_jobs[stage] == rule_jobs, (stage, stage_jobs[stage], rule_jobs)
