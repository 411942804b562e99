"""Faults during a run (issue 6): SIGKILL / SIGTERM of ``alta extract shard`` mid-shard and the rerun, MLflow
down at start and going down mid-run, and a failing disk under the image store.

The shard is ~120 full-size (1024 x 1024, 12-bit) DICOMs, hard links of one file under different dicom_ids, so
the tree costs nothing to build while extraction takes a few seconds with one worker; signals are sent as soon as
the first PNG of the shard exists, i.e. after the shard has started writing and long before it ends.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset, write_dicom

from alta import tracking

pytestmark = pytest.mark.slow  # kills stage subprocesses mid-run
N_FILES = 120
OUTPUTS = ("images.parquet", "rejects.parquet", "store.u8")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("big_shard")
    rng = np.random.default_rng(0)
    img = (np.linspace(0, 1, 1024)[None, :] * np.linspace(0.3, 1, 1024)[:, None] * 3000
           + rng.integers(0, 800, (1024, 1024))).astype(np.uint16)
    src = write_dicom(root / "one.dcm", make_dataset(img, bits_stored=12, ViewPosition="PA"))
    for i in range(N_FILES):
        d = root / "files" / "p10" / f"p100000{i // 10:02d}" / f"s5000{i // 2:04d}"
        d.mkdir(parents=True, exist_ok=True)
        os.link(src, d / f"img{i:04d}.dcm")
    return root


def _cmd(root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "alta.data.extract", "shard", "--source", "mimic", "--root", str(root), "--shard",
            "p10", "--out", str(out), "--workers", "1", *extra]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (tracking.CONTEXT_ENV, "MLFLOW_TRACKING_URI")}
    return {**env, **extra}


def _run(root: Path, out: Path, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(root, out), capture_output=True, text=True, timeout=300, env=env or _env(), **kw)


def _snapshot(out: Path) -> dict[str, bytes]:
    files = [out / "shards" / "p10" / n for n in OUTPUTS] + sorted((out / "png").rglob("*.png"))
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


def _temps(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def clean(tree, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("clean")
    proc = _run(tree, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    snap = _snapshot(out)
    assert sum(k.endswith(".png") for k in snap) == N_FILES
    return snap


def _interrupt(root: Path, out: Path, sig: int) -> subprocess.CompletedProcess:
    """Start a shard, wait until it has written its first PNG, send ``sig``; return the finished process."""
    proc = subprocess.Popen(_cmd(root, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    png_dir = out / "png" / "p10"
    while proc.poll() is None and not (png_dir.is_dir() and any(png_dir.rglob("*.png"))):
        time.sleep(0.01)
    assert proc.poll() is None, "the shard finished before it could be interrupted: make it larger"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_sigkill_mid_shard_then_rerun(tree, clean, tmp_path):
    out = tmp_path / "out"
    killed = _interrupt(tree, out, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    shard = out / "shards" / "p10"
    assert not any((shard / n).exists() for n in OUTPUTS)  # nothing complete-looking
    n_png = len(list((out / "png").rglob("*.png")))
    assert 0 < n_png < N_FILES  # it really was interrupted mid-shard
    assert [p.parent for p in _temps(out)] == [shard]  # the killed store's temporary file is left behind

    rerun = _run(tree, out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _temps(out) == []  # temporaries of the killed run are gone, not picked up
    assert _snapshot(out) == clean  # byte-identical to a clean run


def test_sigterm_mid_shard_cleans_up_then_rerun(tree, clean, tmp_path):
    out = tmp_path / "out"
    term = _interrupt(tree, out, signal.SIGTERM)
    assert term.returncode != 0
    assert "Traceback" not in term.stderr
    last = term.stderr.strip().splitlines()[-1]
    assert "SIGTERM" in last and "p10" in last
    shard = out / "shards" / "p10"
    assert not any((shard / n).exists() for n in OUTPUTS)
    assert _temps(out) == []  # SIGTERM unwinds: the store's temporary file is deleted at once
    records = [json.loads(l) for l in (shard / "tracking.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "end" and records[-1]["payload"]["status"] == "FAILED"

    rerun = _run(tree, out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _snapshot(out) == clean


# --- MLflow outages -------------------------------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_records(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "shards" / "p10" / "tracking.jsonl").read_text().splitlines()]


def test_tracking_server_down_at_start(tree, tmp_path):
    ctx = tmp_path / "context.json"
    ctx.write_text(json.dumps({"tracking_uri": f"http://127.0.0.1:{_closed_port()}", "experiment_id": "1",
                               "parent_run_id": "abc"}))
    out = tmp_path / "out"
    proc = _run(tree, out, env=_env(**{tracking.CONTEXT_ENV: str(ctx)}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "alta tracking-sync" in proc.stderr
    recs = _local_records(out)
    metrics = {k: v for r in recs if r["kind"] == "metrics" for k, v in r["payload"]["values"].items()}
    assert metrics["n_in"] == N_FILES and metrics["n_kept"] == N_FILES
    assert recs[-1]["payload"]["status"] == "FINISHED"
    assert (out / "shards" / "p10" / "images.parquet").is_file()


class _OneRunServer(BaseHTTPRequestHandler):
    """Stands in for an MLflow server that accepts a run and its parameters, then goes away (process gone,
    port closed). HTTP/1.0: every request is a new connection, so nothing reaches the dead server afterwards."""

    seen: list[str] = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).seen.append(self.path)
        if self.path.endswith("/runs/create"):
            body = {"run": {"info": {"run_id": "r1", "run_uuid": "r1", "experiment_id": "1", "status": "RUNNING",
                                     "start_time": 0, "lifecycle_stage": "active", "artifact_uri": "/dev/null"},
                            "data": {}}}
        else:
            body = {}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        if self.path.endswith("/runs/log-batch"):  # the parameters are in: the server dies now
            threading.Thread(target=self.server.shutdown, daemon=True).start()


def test_tracking_server_goes_down_mid_run(tree, tmp_path):
    _OneRunServer.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OneRunServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ctx = tmp_path / "context.json"
    ctx.write_text(json.dumps({"tracking_uri": f"http://127.0.0.1:{server.server_address[1]}",
                               "experiment_id": "1", "parent_run_id": "abc"}))
    proc = subprocess.Popen(_cmd(tree, tmp_path / "out"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(**{tracking.CONTEXT_ENV: str(ctx)}))
    thread.join(timeout=120)  # serve_forever returns once the parameters were logged
    server.server_close()
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert [p.rsplit("/", 1)[-1] for p in _OneRunServer.seen] == ["create", "log-batch"]
    assert "alta tracking-sync" in stderr and "Traceback" not in stderr
    recs = _local_records(tmp_path / "out")
    metrics = {k: v for r in recs if r["kind"] == "metrics" for k, v in r["payload"]["values"].items()}
    assert metrics["n_in"] == N_FILES and "wall_seconds" in metrics
    assert recs[-1]["payload"]["status"] == "FINISHED"


# --- disk failures ---------------------------------------------------------------------------------------------
def _fsize_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, not a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_store_write_failure_is_reported_not_ignored(tree, tmp_path):
    out = tmp_path / "out"
    proc = _run(tree, out, preexec_fn=_fsize_limit(3 << 20))  # PNGs fit; the store outgrows 3 MiB mid-shard
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "store.u8" in last and "File too large" in last, last
    shard = out / "shards" / "p10"
    assert not any((shard / n).exists() for n in OUTPUTS)
    assert _temps(out) == []


def test_store_publish_failure_is_reported(tree, tmp_path):
    out = tmp_path / "out"
    (out / "shards" / "p10" / "store.u8").mkdir(parents=True)  # renaming the finished store onto it fails
    proc = _run(tree, out)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "store.u8" in last, last
    shard = out / "shards" / "p10"
    assert not (shard / "images.parquet").exists() and not (shard / "rejects.parquet").exists()
    assert _temps(out) == []
