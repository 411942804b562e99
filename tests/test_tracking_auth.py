"""Tracking against an authenticated MLflow server (MLflow's basic-auth app on 127.0.0.1): where job credentials
come from, that requests without them are refused, and that a password never reaches a message, a record or the
environment of child processes. The Slurm path is in tests/test_slurm.py."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys

import pytest
from conftest import REPO

from alta import config as alta_config
from alta import tracking

USER = "alta-test-user"


def write_credentials(path, user, password, mode=0o600):
    path.write_text(f"[mlflow]\nmlflow_tracking_username = {user}\nmlflow_tracking_password = {password}\n")
    path.chmod(mode)
    return path


# ------------------------------------------------------------------------------ credentials file, URI ---------
def test_credentials_file_errors_name_the_file_not_the_secret(tmp_path, caplog):
    secret = "s3cret-" + secrets.token_hex(4)
    good = write_credentials(tmp_path / "ok.ini", USER, secret)
    assert tracking.read_credentials(good) == (USER, secret)

    with pytest.raises(tracking.CredentialsError, match=r"missing\.ini: cannot read"):
        tracking.read_credentials(tmp_path / "missing.ini")
    bad = tmp_path / "bad.ini"
    bad.write_text(f"mlflow_tracking_password = {secret}\n")  # no section header
    with pytest.raises(tracking.CredentialsError, match=r"bad\.ini: not an INI file") as exc:
        tracking.read_credentials(bad)
    assert secret not in str(exc.value) and exc.value.__cause__ is None and exc.value.__suppress_context__
    half = tmp_path / "half.ini"
    half.write_text("[mlflow]\nmlflow_tracking_username = someone\n")
    with pytest.raises(tracking.CredentialsError, match=r"half\.ini: needs an \[mlflow\] section"):
        tracking.read_credentials(half)

    open_file = write_credentials(tmp_path / "open.ini", USER, secret, mode=0o644)
    with caplog.at_level(logging.WARNING, logger="alta.tracking"):
        tracking.read_credentials(open_file)
    assert any("open.ini can be read by other users" in r.getMessage() for r in caplog.records)
    assert all(secret not in r.getMessage() for r in caplog.records)


def test_uri_with_credentials_is_refused_without_echoing_it(tmp_path):
    uri = "http://someone:hunter2-secret@mlflow-host:5000"
    with pytest.raises(tracking.CredentialsError) as exc:
        tracking.check_uri(uri)
    assert "hunter2" not in str(exc.value)
    assert tracking.safe_uri(uri) == "http://***@mlflow-host:5000"
    tracking.check_uri("http://mlflow-host:5000")
    with pytest.raises(tracking.CredentialsError):
        tracking.start_parent(tmp_path / "ctx.json", uri, "exp", "run")
    assert not (tmp_path / "ctx.json").exists()


def test_config_check_reports_a_bad_credentials_file(tmp_path):
    cfg = alta_config.load(REPO / "config.yaml")
    cfg["mlflow"]["credentials_file"] = str(tmp_path / "nope.ini")
    with pytest.raises(alta_config.ConfigError, match=r"mlflow\.credentials_file: path does not exist"):
        alta_config.check_paths(cfg, base=REPO)
    (tmp_path / "nope.ini").write_text("[other]\n")
    with pytest.raises(alta_config.ConfigError, match=r"nope\.ini: needs an \[mlflow\] section"):
        alta_config.check_paths(cfg, base=REPO)
    cfg["mlflow"].update(credentials_file=None, tracking_uri="http://u:p@host:5000")
    with pytest.raises(alta_config.ConfigError, match=r"must not contain a user name or password"):
        alta_config.check_paths(cfg, base=REPO)


# ------------------------------------------------------------------------------ a real auth server ------------
@pytest.fixture(scope="module")
def server(mlflow_server):
    password = secrets.token_urlsafe(16)
    mlflow_server.create_user(USER, password)
    mlflow_server.user = (USER, password)
    return mlflow_server


@pytest.fixture()
def no_env_login(monkeypatch):
    for k in (tracking.USERNAME_ENV, tracking.PASSWORD_ENV):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", os.environ.get("TMPDIR", "/tmp") + "/no-home")  # no ~/.mlflow/credentials


def run_params(server, run_id):
    status, body = server.request("GET", f"/api/2.0/mlflow/runs/get?run_id={run_id}", auth=server.admin)
    assert status == 200, body
    return body["run"]


@pytest.mark.slow
def test_credentials_file_logs_and_stays_out_of_the_environment(server, tmp_path, no_env_login, monkeypatch):
    creds = write_credentials(tmp_path / "creds.ini", *server.user)
    ctx_file = tmp_path / "context.json"
    monkeypatch.setenv(tracking.CONTEXT_ENV, str(ctx_file))
    ctx = tracking.start_parent(ctx_file, server.url, "auth-exp", "snakemake all", params={"seed": 1},
                                credentials_file=creds)
    assert ctx["parent_run_id"] and json.loads(ctx_file.read_text())["credentials_file"] == str(creds)
    with tracking.stage_run("pair", {"k": 3}, tmp_path / "pair") as run:
        run.log_metrics({"n": 2.0}, step=1)
        # a child process started during the stage sees no credentials
        env = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.environ))"], capture_output=True,
                             text=True, check=True).stdout
        assert tracking.PASSWORD_ENV not in env and tracking.PASSWORD_ENV not in os.environ
    tracking.end_parent(ctx_file)
    assert run.run_id
    got = run_params(server, run.run_id)
    assert got["info"]["status"] == "FINISHED"
    assert {p["key"]: p["value"] for p in got["data"]["params"]} == {"k": "3"}
    local = (tmp_path / "pair" / "tracking.jsonl").read_text() + ctx_file.read_text()
    assert server.user[1] not in local and server.user[1] not in json.dumps(got)


@pytest.mark.slow
def test_environment_login_and_refusal_without_one(server, tmp_path, no_env_login, monkeypatch, caplog):
    ctx = {"tracking_uri": server.url, "experiment_id": None, "parent_run_id": None, "experiment": "auth-env"}
    (tmp_path / "ctx.json").write_text(json.dumps(ctx))
    monkeypatch.setenv(tracking.CONTEXT_ENV, str(tmp_path / "ctx.json"))
    # no login: the server refuses (401), the stage still runs and keeps its records locally
    status, _ = server.request("POST", "/api/2.0/mlflow/experiments/search", {"max_results": 1})
    assert status == 401
    with caplog.at_level(logging.WARNING, logger="alta.tracking"):
        with tracking.stage_run("sections", {"a": 1}, tmp_path / "refused") as run:
            run.log_metrics({"n": 1.0})
    assert run.run_id is None
    assert any("unavailable" in r.getMessage() for r in caplog.records)
    assert [json.loads(x)["kind"] for x in (tmp_path / "refused" / "tracking.jsonl").read_text().splitlines()][-1] \
        == "end"
    # MLflow's own environment variables: the stage logs
    monkeypatch.setenv(tracking.USERNAME_ENV, server.user[0])
    monkeypatch.setenv(tracking.PASSWORD_ENV, server.user[1])
    with tracking.stage_run("sections", {"a": 1}, tmp_path / "env") as run:
        run.log_metrics({"n": 1.0})
    assert run.run_id and run_params(server, run.run_id)["info"]["status"] == "FINISHED"
    # replaying the refused stage's local copy, with the credentials file
    monkeypatch.delenv(tracking.USERNAME_ENV)
    monkeypatch.delenv(tracking.PASSWORD_ENV)
    creds = write_credentials(tmp_path / "creds.ini", *server.user)
    out = subprocess.run([sys.executable, "-m", "alta.tracking_sync", str(tmp_path / "refused" / "tracking.jsonl"),
                          "--tracking-uri", server.url, "--experiment", "auth-env", "--credentials-file", str(creds)],
                         capture_output=True, text=True, env={**os.environ})
    assert out.returncode == 0, out.stderr[-3000:]
    assert run_params(server, out.stdout.strip().splitlines()[-1])["info"]["status"] == "FINISHED"
    assert server.user[1] not in out.stdout + out.stderr
