"""MLflow wiring: parent/child nesting, tags, outage tolerance with a local copy, and replay."""

import json
import logging
import uuid

import pytest

from alta import tracking


@pytest.fixture()
def ctx_file(tmp_path, monkeypatch):
    path = tmp_path / "context.json"
    monkeypatch.setenv(tracking.CONTEXT_ENV, str(path))
    return path


def test_parent_and_child_runs(tmp_path, ctx_file):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ctx = tracking.start_parent(ctx_file, uri, "exp", "snakemake all", params={"seed": 0})
    assert ctx["parent_run_id"]
    with tracking.stage_run("extract", {"workers": 2, "size": 512}, tmp_path / "extract") as run:
        run.log_metrics({"n_images": 10.0, "bad": float("nan")})
    tracking.end_parent(ctx_file)

    client = tracking._client(ctx["tracking_uri"])
    child = client.get_run(run.run_id)
    assert child.data.tags["mlflow.parentRunId"] == ctx["parent_run_id"]
    assert child.data.tags["alta.stage"] == "extract"
    assert child.data.params["workers"] == "2"
    assert child.data.metrics["n_images"] == 10.0
    assert "bad" not in child.data.metrics  # non-finite values stay local only
    assert child.info.status == "FINISHED"
    assert client.get_run(ctx["parent_run_id"]).info.status == "FINISHED"
    local = [json.loads(l) for l in (tmp_path / "extract" / "tracking.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "metrics" and "bad" in r["payload"]["values"] for r in local)


def test_outage_keeps_stage_running_and_sync_replays(tmp_path, ctx_file, caplog):
    # Nothing listens on port 9 of loopback: every MLflow call fails fast.
    ctx_file.write_text(json.dumps({"tracking_uri": "http://127.0.0.1:9", "experiment_id": "0",
                                    "parent_run_id": "x"}))
    with caplog.at_level(logging.WARNING, logger="alta.tracking"):
        with tracking.stage_run("align", {"lr": 1e-4}, tmp_path / "align") as run:
            for step in range(3):
                run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    assert run.run_id is None
    assert any("tracking" in r.message.lower() for r in caplog.records)
    jsonl = tmp_path / "align" / "tracking.jsonl"
    kinds = [json.loads(l)["kind"] for l in jsonl.read_text().splitlines()]
    assert kinds.count("metrics") >= 3 and kinds[-1] == "end"

    uri = f"sqlite:///{tmp_path}/replay.db"
    run_id = tracking.sync(jsonl, uri, "replayed")
    client = tracking._client(tracking._resolve_uri(uri))
    hist = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in hist) == [0, 1, 2]
    assert client.get_run(run_id).data.params["lr"] == "0.0001"


def test_failed_stage_marks_run_failed(tmp_path, ctx_file):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ctx = tracking.start_parent(ctx_file, uri, "exp", "run")
    with pytest.raises(RuntimeError):
        with tracking.stage_run("pair", {}, tmp_path / "pair") as run:
            raise RuntimeError("boom")
    assert tracking._client(ctx["tracking_uri"]).get_run(run.run_id).info.status == "FAILED"


def test_parent_run_carries_provenance(tmp_path, ctx_file, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps artifacts in ./mlruns
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    secret = uuid.uuid4().hex  # made up now: not even an uncommitted diff of this file can hold it
    cfg = {"seed": 0, "align": {"preset": "tiny"},
           "mlflow": {"tracking_uri": f"https://alice:{secret}@mlflow.example.org/", "experiment": "e"}}
    files = tracking.provenance_files(cfg)
    assert secret not in "".join(files.values()) and "alice" not in files["provenance/config.yaml"]
    assert "https://***@mlflow.example.org/" in files["provenance/config.yaml"]
    head = tracking._git("rev-parse", "HEAD")
    if head is not None:  # a git checkout: the commit, and the diff when the tree has uncommitted changes
        assert head.strip() in files["provenance/git.txt"]
        dirty = bool((tracking._git("status", "--porcelain") or "").strip())
        assert ("uncommitted changes: yes" in files["provenance/git.txt"]) == dirty
        tracked_change = bool((tracking._git("diff", "HEAD") or "").strip())
        assert ("provenance/uncommitted.diff" in files) == tracked_change
    import mlflow

    assert f"mlflow=={mlflow.__version__}" in files["provenance/packages.txt"].splitlines()
    outside = tracking.provenance_files(cfg, root=tmp_path)  # not a git checkout
    assert "not a git checkout" in outside["provenance/git.txt"] and "provenance/uncommitted.diff" not in outside

    ctx = tracking.start_parent(ctx_file, uri, "exp", "run", artifacts=files)
    client = tracking._client(ctx["tracking_uri"])
    logged = {a.path for a in client.list_artifacts(ctx["parent_run_id"], "provenance")}
    assert {f"provenance/{n}" for n in ("config.yaml", "git.txt", "packages.txt")} <= logged
    local = client.download_artifacts(ctx["parent_run_id"], "provenance/config.yaml", str(tmp_path))
    assert open(local).read() == files["provenance/config.yaml"]


def test_uri_credentials_are_refused_and_never_repeated(tmp_path, ctx_file):
    assert tracking.safe_uri("sqlite:///a.db") == "sqlite:///a.db"
    assert tracking.safe_uri("http://bob:s3cret@127.0.0.1:9/x") == "http://***@127.0.0.1:9/x"
    with pytest.raises(tracking.CredentialsError) as err:
        tracking.start_parent(ctx_file, "http://bob:s3cret@127.0.0.1:9", "exp", "run")
    assert "s3cret" not in str(err.value) and "bob" not in str(err.value) and not ctx_file.exists()
    files = tracking.provenance_files({"mlflow": {"tracking_uri": "http://bob:s3cret@h:5000"}})
    assert "s3cret" not in files["provenance/config.yaml"] and "***@h:5000" in files["provenance/config.yaml"]
