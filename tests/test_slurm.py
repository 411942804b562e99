"""The demo workflow through `snakemake --profile slurm` on a real one-node Slurm cluster with a real MLflow server.

What runs: tests/slurm_harness.py starts munged + slurmctld + slurmd on localhost (no accounting, CPU-only node) and
`mlflow server` with MLflow's basic-auth app (127.0.0.1 only); Snakemake submits every rule with sbatch through
the repository's Slurm profile. The jobs log in as a pipeline user whose login is in a credentials file named by the
config (`mlflow.credentials_file`).

The README command is `snakemake --profile slurm all` from the repository root, where the `slurm` link resolves to
profiles/slurm. A test cannot write results into the repository, so it runs the same profile, Snakefile and target
with an explicit working directory and config file:
`snakemake all --profile <repo>/profiles/slurm --profile <work>/node-profile -s <repo>/Snakefile -d <work>`.
The second profile holds only what this GPU-less 2-core node needs (the per-rule resources without `gpu`, with
memory and cores that fit) and asks for `align` the way a multi-node job does, by resources only: `mpi: srun`,
`nodes`, `tasks_per_node: 2`, so srun starts its 2 ranks (gloo on CPU; one node here, as this machine can host one
slurmd); `mrm` keeps the default torchrun launcher. Every other setting (executor, squeue status, log folder,
retries) is the real profile's.

While the workflow runs, the `align` job is preempted the way Slurm does it (`scancel --signal=TERM`, delivered to
every process of the job step) right after its first checkpoint; the profile's retries resubmit it and training
resumes from `last.pt`. The same run then proves: every rule ran as a Slurm job, the data stages' outputs are
byte-identical to a local `snakemake --cores 2 data` run of the same config, all child runs sit under one parent
run on the tracking server, each tagged with its Slurm job id, the srun-launched (and preempted) `align` ends with
the same weights, bit for bit, as an uninterrupted local 2-process torchrun `align` on the same inputs, the server
refuses requests without a valid login, and neither the password nor the user name appears in any file the
workflow wrote, in the server's artifact store or in any run's parameters and tags.

Skipped, never failed, when the machine cannot host the cluster (not root, slurm-wlm/munge missing, daemons down).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import slurm_harness as harness
import torch
import yaml
from conftest import REPO, demo_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PROFILE = REPO / "profiles" / "slurm"
TARGET = "all"
# rule -> the `alta.stage` tag of its MLflow child run (demo_data and tokenizer open none)
STAGE_OF_RULE = {"extract_shard": "extract", "extract_merge": "extract", "sections": "sections", "pair": "pair",
                 "text_pretrain": "text_pretrain", "mrm": "mrm", "align": "align", "evaluate": "evaluate",
                 "register_model": "register_model"}
# report_tables is a local rule (a few CSV files from the results): it runs beside Snakemake, not as a job
RULES = ["demo_data", "extract_shard", "extract_merge", "sections", "pair", "tokenizer", "text_pretrain", "mrm", "align",
         "evaluate", "register_model"]
# two CPU training processes (gloo), one thread each on the 2-core node. align gets no periodic checkpoint before
# its last step, so a last.pt it resumes from can only come from the SIGTERM handler; 16 steps leave room to land
# the signal mid-training.
TRAIN = {"nproc": 2, "threads": 1}
ALIGN = {**TRAIN, "max_steps": 16, "ckpt_every": 1000, "log_every": 2}
PREEMPT_RULE = "align"
# the rule launched as Slurm tasks (srun) instead of torchrun, through profile resources only
SRUN_RULE = "align"
SRUN_TASKS = 2
PIPELINE_USER = "alta-ci-pipeline"


# ---------------------------------------------------------------------------------------------- helpers ---------
def node_profile(work: Path, cluster: harness.SlurmCluster) -> Path:
    """The overlay profile: the repository profile's per-rule resources, made to fit a CPU-only 2-core node."""
    base = yaml.safe_load((PROFILE / "config.yaml").read_text())
    set_res = {}
    for rule, res in base.get("set-resources", {}).items():
        # no GRES on this node: without `gpu` the training rules fall back to config nproc CPU processes
        res = {k: v for k, v in res.items() if k not in ("gpu", "cpus_per_gpu", "slurm_partition")}
        res.update(mem_mb=1500, cpus_per_task=min(int(res.get("cpus_per_task", 1)), cluster.cpus))
        set_res[rule] = res
    for rule in ("mrm", "align"):
        set_res.setdefault(rule, {}).update(cpus_per_task=min(TRAIN["nproc"], cluster.cpus), mem_mb=3000)
    # the multi-node recipe of profiles/slurm/config.yaml, on one node: srun tasks, one CPU (one thread) each
    set_res[SRUN_RULE].update(mpi="srun", nodes=1, tasks_per_node=SRUN_TASKS, cpus_per_task=TRAIN["threads"])
    # one core per extraction shard, so that two shards run side by side on the node
    set_res.setdefault("extract_shard", {})["cpus_per_task"] = 1
    overlay = {
        "default-resources": {**base.get("default-resources", {}), "mem_mb": 1000, "cpus_per_task": 1},
        "set-resources": set_res,
        "set-threads": {r: 1 for r in base.get("set-threads", {})},
    }
    d = work / "node-profile"
    d.mkdir(exist_ok=True)
    (d / "config.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    return d


def snakemake_cmd(work: Path, *args: str) -> list[str]:
    # targets first: --configfile takes several values and would swallow a trailing target
    return [sys.executable, "-m", "snakemake", *args, "-s", str(REPO / "Snakefile"), "-d", str(work),
            "--configfile", str(work / "config.yaml")]


def all_logs(work: Path, n: int = 1500) -> str:
    return "\n".join(f"--- {p.relative_to(work)}\n{p.read_text(errors='replace')[-n:]}"
                     for p in sorted((work / "logs").rglob("*.log")))


def slurm_jobs(work: Path) -> dict[str, list[str]]:
    """rule -> Slurm job ids (ascending), from the executor's logs/slurm/rule_<rule>/<wildcards>/<jobid>.log."""
    jobs: dict[str, list[str]] = {}
    for p in (work / "logs" / "slurm").rglob("*.log"):
        rule = p.relative_to(work / "logs" / "slurm").parts[0].removeprefix("rule_")
        jobs.setdefault(rule, []).append(p.stem)
    return {r: sorted(js, key=int) for r, js in jobs.items()}


def running_job(cluster: harness.SlurmCluster, rule: str) -> str | None:
    """The id of the running Slurm job of ``rule`` (the executor puts `rule_<name>` in the job comment)."""
    r = cluster.run("squeue", "--noheader", "-t", "RUNNING", "-o", "%i|%k", check=False, timeout=10)
    for line in r.stdout.splitlines():
        jobid, _, comment = line.partition("|")
        if comment.strip() == f"rule_{rule}":
            return jobid.strip()
    return None


def training_steps_logged(out_dir: Path) -> list[int]:
    """Steps of the training metrics in the stage's local tracking copy (tracking.jsonl, appended as it trains)."""
    try:
        lines = (out_dir / "tracking.jsonl").read_text().splitlines()
    except OSError:
        return []
    recs = [json.loads(line) for line in lines if line.strip().endswith("}")]
    return [r["payload"]["step"] for r in recs if r["kind"] == "metrics" and r["payload"].get("step")]


def preempt_mid_training(work: Path, cluster: harness.SlurmCluster, proc: subprocess.Popen, rule: str,
                         timeout: float) -> dict:
    """Once ``rule``'s job is in its training loop, signal it like a Slurm preemption; return what was done."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        jobid = running_job(cluster, rule)
        if jobid and training_steps_logged(work / "results" / rule):
            # Without --batch/--full, scancel signals every process of the job's steps (here: the inner Snakemake,
            # its shell, torchrun and both workers), as Slurm does before preempting or at the time limit.
            cluster.run("scancel", "--signal=TERM", jobid)
            return {"jobid": jobid, "signalled_at": time.time()}
        time.sleep(0.3)
    return {}


def server_runs(server: harness.MlflowServer, experiment: str, auth: tuple[str, str]) -> list[dict]:
    """All runs of ``experiment`` on the tracking server, read over its REST API with ``auth``."""
    def get(path: str) -> dict:
        status, body = server.request("GET", f"/api/2.0/mlflow/{path}", auth=auth)
        assert status == 200, (path, status, body)
        return body

    def post(path: str, body: dict) -> dict:
        status, out = server.request("POST", f"/api/2.0/mlflow/{path}", body, auth=auth)
        assert status == 200, (path, status, out)
        return out

    exp_id = get("experiments/get-by-name?" + urllib.parse.urlencode({"experiment_name": experiment}))
    runs, token = [], None
    while True:
        page = post("runs/search", {"experiment_ids": [exp_id["experiment"]["experiment_id"]], "max_results": 1000,
                                    **({"page_token": token} if token else {})})
        runs += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            return runs


def tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


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
def pipeline_login(tmp_path_factory, mlflow_server):
    """The jobs' user on the server and its credentials file (outside the working directory, mode 600)."""
    login = (PIPELINE_USER, secrets.token_urlsafe(18))
    mlflow_server.create_user(*login)
    path = tmp_path_factory.mktemp("credentials") / "mlflow-credentials.ini"
    path.write_text(f"[mlflow]\nmlflow_tracking_username = {login[0]}\nmlflow_tracking_password = {login[1]}\n")
    path.chmod(0o600)
    return {"user": login[0], "password": login[1], "file": path}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cluster, mlflow_server, mlflow_uri, pipeline_login):
    """The Slurm run of TARGET (with `align` preempted once) and, alongside it, a local run of `data`."""
    work = tmp_path_factory.mktemp("slurm-work")
    local = tmp_path_factory.mktemp("local-work")
    demo_config(work, mlflow_server.url, mrm=TRAIN, align=ALIGN,
                mlflow={"credentials_file": str(pipeline_login["file"])})
    demo_config(local, mlflow_uri, mrm=TRAIN, align=ALIGN)
    env = {**cluster.env, "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    with open(work / "snakemake.out", "w") as out, open(local / "snakemake.out", "w") as local_out:
        # The local run is the reference for the data stages; it overlaps the Slurm run, which mostly waits on
        # job polling, so the test takes less wall time.
        local_proc = subprocess.Popen(snakemake_cmd(local, "data", "--cores", "2"), cwd=local, env=env,
                                      stdout=local_out, stderr=subprocess.STDOUT)
        proc = subprocess.Popen(snakemake_cmd(work, TARGET, "--profile", str(PROFILE), "--profile",
                                              str(node_profile(work, cluster))),
                                cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            preempted = preempt_mid_training(work, cluster, proc, PREEMPT_RULE, timeout=900)
            rc = proc.wait(timeout=900)
            local_rc = local_proc.wait(timeout=300)
        finally:
            for p in (proc, local_proc):
                if p.poll() is None:
                    p.terminate()
                    p.wait(30)
    elapsed = time.monotonic() - t0
    if rc != 0:
        raise AssertionError(f"snakemake --profile slurm {TARGET} failed ({rc}):\n"
                             f"{(work / 'snakemake.out').read_text()[-6000:]}\n{all_logs(work)}\n{cluster.logs()}")
    if local_rc != 0:
        raise AssertionError(f"local snakemake data failed ({local_rc}):\n"
                             f"{(local / 'snakemake.out').read_text()[-6000:]}\n{all_logs(local)}")
    print(f"\nslurm run of `{TARGET}` in {elapsed:.0f} s; job config via {cluster.config_mode}; preempted {preempted}")
    return {"work": work, "local": local, "preempted": preempted, "elapsed": elapsed}


# ------------------------------------------------------------------------------------------------- tests --------
def test_every_rule_ran_as_a_slurm_job(runs, cluster):
    work = runs["work"]
    jobs = slurm_jobs(work)
    assert sorted(jobs) == sorted(RULES), f"Slurm logs per rule: {jobs}"
    n_shards = len(list((work / "results" / "extract" / "shards").iterdir()))
    assert len(jobs["extract_shard"]) == n_shards >= 2
    for rule, ids in jobs.items():
        # one job per rule (and shard); only the preempted rule was submitted a second time
        expected = n_shards if rule == "extract_shard" else 2 if rule == PREEMPT_RULE else 1
        assert len(ids) == expected, (rule, ids)
    ids = [j for js in jobs.values() for j in js]
    assert len(ids) == len(set(ids))
    # Slurm's own record agrees (finished jobs stay visible for MinJobAge = 5 minutes)
    for rule, js in jobs.items():
        for j in js:
            info = cluster.run("scontrol", "show", "job", j, check=False).stdout
            if not info:
                continue
            assert f"Comment=rule_{rule}" in info, info
            state = "FAILED" if j == runs["preempted"].get("jobid") else "COMPLETED"
            assert f"JobState={state}" in info, info


def test_preempted_training_resumed_from_its_last_checkpoint(runs, cluster):
    work, pre = runs["work"], runs["preempted"]
    assert pre, f"the {PREEMPT_RULE} job finished before it could be signalled"
    first, retry = slurm_jobs(work)[PREEMPT_RULE]
    assert first == pre["jobid"]
    # The signalled job failed (its child run too: see the MLflow test) and Snakemake's retries resubmitted it.
    # Its training loop closed its run normally, which a process killed by the signal could not have done.
    recs = [json.loads(line) for line in (work / "results" / PREEMPT_RULE / "tracking.jsonl").read_text().splitlines()]
    ends = [(r["payload"]["status"]) for r in recs if r["kind"] == "end"]
    assert ends == ["FAILED", "FINISHED"], ends
    # The retry resumed from last.pt mid-way; with no periodic checkpoint before the end, only the SIGTERM
    # handler can have written it.
    train_log = (work / "logs" / PREEMPT_RULE / f"{PREEMPT_RULE}.log").read_text(errors="replace")
    resumed = [line for line in train_log.splitlines() if "resumed from" in line and "last.pt" in line]
    assert resumed, train_log[-4000:]
    step_at_resume = int(resumed[-1].split(" at step ")[1].split()[0])
    max_steps = yaml.safe_load((work / "config.yaml").read_text())[PREEMPT_RULE]["max_steps"]
    assert 0 < step_at_resume < max_steps, resumed
    ck = torch.load(work / "results" / PREEMPT_RULE / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ck["step"] == max_steps
    summary = json.loads((work / "results" / PREEMPT_RULE / "train_summary.json").read_text())
    assert summary["step"] == summary["total_steps"] == max_steps
    # the retry asked Slurm for twice the wall time (the rule's runtime scales with the attempt)
    limits = [re.search(r"TimeLimit=(\S+)", cluster.run("scontrol", "show", "job", j).stdout) for j in (first, retry)]
    if all(limits):
        assert [m.group(1) for m in limits] == ["2-00:00:00", "4-00:00:00"], limits


def test_data_outputs_identical_to_a_local_run(runs):
    for rel in ("extract/images.parquet", "sections/sections.parquet", "pair/pairs.parquet"):
        a, b = runs["work"] / "results" / rel, runs["local"] / "results" / rel
        assert a.read_bytes() == b.read_bytes(), f"{rel} differs between the Slurm and the local run"
        assert len(pd.read_parquet(a)) > 0


def test_child_runs_under_one_parent_with_slurm_job_ids(runs, mlflow_server, pipeline_login):
    work = runs["work"]
    all_runs = server_runs(mlflow_server, f"test-{work.name}", (pipeline_login["user"], pipeline_login["password"]))
    parents = [r for r in all_runs if tags(r).get("alta.kind") == "workflow"]
    assert len(parents) == 1, [tags(r) for r in parents]
    parent = parents[0]["info"]["run_id"]
    assert parents[0]["info"]["status"] == "FINISHED"
    children = [r for r in all_runs if r["info"]["run_id"] != parent]
    assert children and all(tags(r).get("mlflow.parentRunId") == parent for r in children)

    jobs = slurm_jobs(work)
    by_stage: dict[str, list[tuple[str, str, str]]] = {}
    for r in children:
        t = tags(r)
        assert t["alta.slurm_job_id"] != "none", t
        by_stage.setdefault(t["alta.stage"], []).append((t["alta.slurm_job_id"], r["info"].get("run_name", ""),
                                                         r["info"]["status"]))
    assert set(by_stage) == {STAGE_OF_RULE[r] for r in RULES if r in STAGE_OF_RULE}
    for stage, found in by_stage.items():
        rule_jobs = {j for rule, js in jobs.items() if STAGE_OF_RULE.get(rule) == stage for j in js}
        assert {j for j, _, _ in found} == rule_jobs, (stage, found, rule_jobs)
    # every child run was closed: FINISHED, or FAILED for the preempted attempt (a run left RUNNING means the
    # stage lost its connection to the server part-way; its log says why)
    preempted = runs["preempted"]["jobid"]
    for stage, found in by_stage.items():
        for jobid, name, status in found:
            assert status == ("FAILED" if jobid == preempted else "FINISHED"), (stage, name, jobid, status)


def test_srun_ranks_end_with_the_weights_of_a_torchrun_run(runs, mlflow_server, pipeline_login):
    """align ran as SRUN_TASKS srun ranks (and was preempted and resumed); an uninterrupted local torchrun align with
    the same processes, global batch, seed and inputs ends with bitwise the same weights."""
    work = runs["work"]
    login = (pipeline_login["user"], pipeline_login["password"])
    launchers = {}
    for r in server_runs(mlflow_server, f"test-{work.name}", login):
        p = {x["key"]: x["value"] for x in r["data"].get("params", [])}
        if "launcher" in p:
            launchers.setdefault(tags(r)["alta.stage"], set()).add((p["launcher"], p["world_size"]))
    assert launchers["mrm"] == {("torchrun", str(TRAIN["nproc"]))}, launchers
    assert launchers[SRUN_RULE] == {("srun", str(SRUN_TASKS))}, launchers  # both attempts

    # The reference: the same working directory (inputs, config, Snakemake metadata) without the srun rule's
    # outputs, run locally, where the rule launches torchrun --standalone --nproc_per_node=nproc.
    ref = work.parent / f"{work.name}-torchrun"
    shutil.copytree(work, ref, symlinks=True,
                    ignore=shutil.ignore_patterns("node-profile", ".snakemake/locks", ".snakemake/incomplete"))
    shutil.rmtree(ref / "results" / SRUN_RULE)
    shutil.rmtree(ref / "logs" / SRUN_RULE)
    cfg = yaml.safe_load((ref / "config.yaml").read_text())
    cfg["mlflow"].update(tracking_uri=f"sqlite:///{ref / 'mlflow.db'}", credentials_file=None)
    (ref / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = subprocess.run(snakemake_cmd(ref, f"results/{SRUN_RULE}/checkpoint.pt", "--cores", "2"), cwd=ref,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-6000:] + all_logs(ref)
    ran = re.findall(r"^(?:local)?rule (\w+):", out.stderr, re.M)
    assert ran == [SRUN_RULE], ran  # nothing upstream was rerun: same inputs
    log = (ref / "logs" / SRUN_RULE / f"{SRUN_RULE}.log").read_text(errors="replace")
    assert f"rank 0/{SRUN_TASKS} (torchrun)" in log and "resumed from" not in log

    a = torch.load(work / "results" / SRUN_RULE / "checkpoint.pt", map_location="cpu", weights_only=False)
    b = torch.load(ref / "results" / SRUN_RULE / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert a["step"] == b["step"] == ALIGN["max_steps"]
    assert a["world_size"] == b["world_size"] == SRUN_TASKS
    assert a["model"].keys() == b["model"].keys()
    differ = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not differ, f"{len(differ)} of {len(a['model'])} tensors differ, e.g. {differ[:5]}"


def test_server_refuses_requests_without_a_valid_login(runs, mlflow_server, pipeline_login):
    search = ("POST", "/api/2.0/mlflow/experiments/search", {"max_results": 10})
    status, _ = mlflow_server.request(*search)
    assert status == 401
    status, _ = mlflow_server.request(*search, auth=(pipeline_login["user"], "wrong-" + pipeline_login["password"]))
    assert status == 401
    status, _ = mlflow_server.request("GET", "/api/2.0/mlflow/experiments/get-by-name?experiment_name="
                                      + urllib.parse.quote(f"test-{runs['work'].name}"))
    assert status == 401
    status, body = mlflow_server.request(*search, auth=(pipeline_login["user"], pipeline_login["password"]))
    assert status == 200 and any(e["name"] == f"test-{runs['work'].name}" for e in body["experiments"]), body


def test_no_credential_in_any_output(runs, cluster, mlflow_server, pipeline_login):
    work = runs["work"]
    secrets_ = {"pipeline password": pipeline_login["password"], "admin password": mlflow_server.admin[1],
                "pipeline user": pipeline_login["user"]}
    server_root = mlflow_server.log.parent
    # every file the workflow wrote (results, logs, Slurm logs, Snakemake's metadata, its output), the Slurm
    # daemons' logs and state, and the server's artifact store
    files = [p for p in work.rglob("*") if p.is_file()] + [p for p in cluster.root.rglob("*") if p.is_file()
                                                           and "munge" not in p.parts]
    files += [p for p in (server_root / "artifacts").rglob("*") if p.is_file()]
    assert len(files) > 100 and any(p.suffix == ".log" for p in files)
    assert any((server_root / "artifacts").rglob("*.json")), "no artifact reached the server"
    for p in files:
        try:
            data = p.read_bytes()
        except FileNotFoundError:  # slurmctld purges a finished job's state files while we read
            continue
        for what, value in secrets_.items():
            assert value.encode() not in data, f"{what} found in {p}"
    # every parameter and tag of every run on the server (read as the admin)
    everything = server_runs(mlflow_server, f"test-{work.name}", mlflow_server.admin)
    assert everything
    text = json.dumps([r["data"] for r in everything])
    for what in ("pipeline password", "admin password"):
        assert secrets_[what] not in text, f"{what} found in a run's params/tags/metrics"
    # the context file jobs read holds the credentials file's path only
    ctx = json.loads((work / "results" / "mlflow" / "context.json").read_text())
    assert ctx["credentials_file"] == str(pipeline_login["file"])
