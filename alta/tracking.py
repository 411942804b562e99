"""MLflow tracking for pipeline stages: one parent run per Snakemake invocation, one child run per stage job.

How runs are wired (docs/architecture.md, MLflow):

* The Snakefile's ``onstart`` calls :func:`start_parent`, which creates (once, not raced by jobs) the experiment and
  a parent run, and writes a *tracking context* JSON file: ``{"tracking_uri", "experiment_id", "parent_run_id"}``.
  The Snakefile exports the context file's path as ``ALTA_TRACKING_CONTEXT``; local jobs inherit it and Slurm jobs
  get it through sbatch's default ``--export=ALL``. We never use ``MLFLOW_RUN_ID``, which breaks nesting.
* Each stage wraps its work in :func:`stage_run`, which creates a child run tagged ``alta.stage``, ``alta.config_hash``,
  ``alta.git_commit`` and ``alta.slurm_job_id`` under the parent.
* Run standalone (``alta extract ...`` without Snakemake) a stage logs to ``MLFLOW_TRACKING_URI`` if set, else only
  locally.

Authenticated servers (``mlflow server --app-name basic-auth``): the credentials come from MLflow's own sources,
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` in the environment or ``~/.mlflow/credentials``, or from
the config's ``mlflow.credentials_file`` (an INI file in the same format, see :func:`read_credentials`). Only the
file's *path* travels in the tracking context; its content is read by each process, put in the environment for
the duration of each MLflow call (:class:`_AuthClient`) and never logged, recorded or passed to child processes.
A tracking URI holding a user name or password is refused (:func:`check_uri`): it would land in logs and context.

Outages never fail a stage: every record is first appended to ``<out_dir>/tracking.jsonl`` (the local copy), then
sent to MLflow; the first failed call logs one warning saying how to replay the file (``alta tracking-sync``), and
later calls go only to the local file. Only the MlflowClient API is used (no fluent global state), so that
training loops in several threads or ranks cannot cross-contaminate runs.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import logging
import math
import os
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

from alta import io

log = logging.getLogger("alta.tracking")

CONTEXT_ENV = "ALTA_TRACKING_CONTEXT"

# A tracking server that is down must cost seconds, not the minutes of MLflow's default retry back-off. A down
# server refuses connections at once; the read timeout only waits on a slow one, and a too-short one is worse than
# slow: a timed-out `runs/create` that the server did carry out is retried, and the first run stays RUNNING forever
# (seen with 10 s on a loaded machine).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts/lists to ``{"a.b.0": value}`` (MLflow params are flat strings)."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, (list, tuple)) and any(isinstance(x, (dict, list, tuple)) for x in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out


def git_commit() -> str:
    """The commit of the source tree the code runs from, or ``unknown`` outside a git checkout."""
    try:
        root = Path(__file__).resolve().parent.parent
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _git(*args: str, root: str | os.PathLike | None = None) -> str | None:
    """Output of a git command in ``root`` (default: the source tree), or None outside a checkout / without git."""
    try:
        root = root or Path(__file__).resolve().parent.parent
        r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
        return r.stdout if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance_files(cfg: dict, root: str | os.PathLike | None = None) -> dict[str, str]:
    """Artifacts of a workflow's parent run: the resolved config (tracking URI redacted), the git commit and
    status of ``root`` (default: the source tree the code runs from), the uncommitted diff (when there is one),
    and the installed package versions."""
    import copy
    from importlib import metadata

    import yaml

    resolved = copy.deepcopy(dict(cfg))
    if isinstance(resolved.get("mlflow"), dict):
        resolved["mlflow"]["tracking_uri"] = safe_uri(resolved["mlflow"].get("tracking_uri"))
    files = {"provenance/config.yaml": yaml.safe_dump(json.loads(json.dumps(resolved, default=str)),
                                                      sort_keys=False)}
    commit = _git("rev-parse", "HEAD", root=root)
    if commit is None:
        files["provenance/git.txt"] = "commit: unknown (not a git checkout)\n"
    else:
        status = _git("status", "--porcelain", root=root) or ""
        files["provenance/git.txt"] = (f"commit: {commit.strip()}\nuncommitted changes: "
                                       f"{'yes' if status.strip() else 'no'}\n\n{status}")
        diff = _git("diff", "HEAD", "--no-color", "--no-ext-diff", root=root) or ""
        if diff.strip():
            files["provenance/uncommitted.diff"] = diff
    pkgs = sorted({f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"]},
                  key=str.lower)
    files["provenance/packages.txt"] = "\n".join(pkgs) + "\n"
    return files


def _server_rejected(exc: Exception) -> bool:
    """True when the server answered and refused a record (HTTP 4xx / invalid value), not when it is unreachable."""
    code = getattr(exc, "error_code", "") or ""
    return code in {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_ALREADY_EXISTS"}


USERNAME_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


class CredentialsError(ValueError):
    """A tracking URI with credentials in it, or an unusable credentials file (the message never holds a secret)."""


def check_uri(uri: str) -> None:
    """Refuse ``http://user:password@host`` URIs (the message does not repeat the URI)."""
    parts = urllib.parse.urlsplit(uri or "")
    if parts.username or parts.password:
        raise CredentialsError("mlflow.tracking_uri: must not contain a user name or password (it would be written "
                               "to logs and the tracking context); set MLFLOW_TRACKING_USERNAME/PASSWORD, "
                               "~/.mlflow/credentials or mlflow.credentials_file instead")


def safe_uri(uri: str | None) -> str:
    """``uri`` with any user name/password replaced by ``***`` (for messages)."""
    parts = urllib.parse.urlsplit(uri or "")
    if not (parts.username or parts.password):
        return str(uri)
    host = parts.hostname or ""
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + host + (f":{parts.port}" if parts.port else "")))


def read_credentials(path: str | os.PathLike) -> tuple[str, str]:
    """(username, password) from an INI file in MLflow's ``~/.mlflow/credentials`` format::

        [mlflow]
        mlflow_tracking_username = alta-pipeline
        mlflow_tracking_password = ...

    Errors name the file and the problem, never its content. A file other users can read draws a warning.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        mode = p.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"{p}: cannot read the MLflow credentials file "
                               f"({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=str(p))
    except configparser.Error:
        # from None: configparser's messages quote the offending line, which may hold the password
        raise CredentialsError(f"{p}: not an INI file (expected an [mlflow] section with "
                               f"mlflow_tracking_username and mlflow_tracking_password)") from None
    sec = parser["mlflow"] if parser.has_section("mlflow") else {}
    user, password = (sec.get(USERNAME_ENV.lower(), "").strip(), sec.get(PASSWORD_ENV.lower(), "").strip())
    if not user or not password:
        raise CredentialsError(f"{p}: needs an [mlflow] section with mlflow_tracking_username and "
                               f"mlflow_tracking_password")
    if mode & 0o077:
        log.warning("%s can be read by other users (mode %o); restrict it with chmod 600", p, mode & 0o777)
    return user, password


_ENV_LOCK = threading.RLock()


class _AuthClient:
    """An MlflowClient whose calls see the credentials in the environment, only while each call runs.

    MLflow reads ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` at every request; setting them for the process would
    hand them to every child (Snakemake jobs, sbatch exports) and to anything that dumps the environment.
    """

    def __init__(self, client, credentials: tuple[str, str]):
        self._client, self._credentials = client, credentials

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            with _ENV_LOCK:
                old = {k: os.environ.get(k) for k in (USERNAME_ENV, PASSWORD_ENV)}
                os.environ[USERNAME_ENV], os.environ[PASSWORD_ENV] = self._credentials
                try:
                    return attr(*args, **kwargs)
                finally:
                    for k, v in old.items():
                        if v is None:
                            os.environ.pop(k, None)
                        else:
                            os.environ[k] = v

        return call

    def __repr__(self) -> str:  # never show the credentials
        return f"_AuthClient({self._client!r})"


def _client(uri: str, credentials_file: str | os.PathLike | None = None):
    """An MlflowClient; with ``credentials_file`` (and no credentials in the environment, which win, as in
    MLflow) one whose calls authenticate with the file's user and password."""
    from mlflow.tracking import MlflowClient

    check_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    if credentials_file and not (os.environ.get(USERNAME_ENV) and os.environ.get(PASSWORD_ENV)):
        return _AuthClient(client, read_credentials(credentials_file))
    return client


def _resolve_uri(uri: str, base: Path | None = None) -> str:
    """Make a relative ``sqlite:///rel/path.db`` absolute (jobs may run in another working directory)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = Path(uri[len("sqlite:///"):])
        path = (base or Path.cwd()) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return "sqlite:///" + str(path.resolve())
    return uri


def start_parent(context_file: str | os.PathLike, tracking_uri: str, experiment: str, run_name: str,
                 params: dict | None = None, tags: dict | None = None,
                 credentials_file: str | os.PathLike | None = None, artifacts: dict[str, str] | None = None) -> dict:
    """Create the experiment (if absent) and a parent run; write the context file atomically; return the context.

    ``artifacts`` maps artifact paths to texts logged on the parent run (:func:`provenance_files`).
    On any tracking error the context is written with ``parent_run_id: null`` and a warning is logged, so the
    workflow still runs and stages log locally. A URI with credentials in it or an unusable ``credentials_file``
    raises :class:`CredentialsError` (a configuration error, not an outage). The context keeps the file's path.
    """
    uri = _resolve_uri(tracking_uri)
    check_uri(uri)
    if credentials_file:
        credentials_file = str(Path(credentials_file).resolve())
        read_credentials(credentials_file)
    ctx: dict[str, Any] = {"tracking_uri": uri, "experiment_id": None, "parent_run_id": None, "experiment": experiment,
                           **({"credentials_file": credentials_file} if credentials_file else {})}
    try:
        client = _client(uri, credentials_file)
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
        run = client.create_run(exp_id, run_name=run_name, tags={"alta.kind": "workflow",
                                                                   "alta.git_commit": git_commit(), **(tags or {})})
        ctx.update(experiment_id=exp_id, parent_run_id=run.info.run_id)
        if params:
            _log_params(client, run.info.run_id, params)
        for path, text in (artifacts or {}).items():
            client.log_text(run.info.run_id, text, path)
    except Exception as exc:  # noqa: BLE001 - an outage must not stop the workflow
        log.warning("MLflow tracking unavailable at %s (%s); stages will log locally to tracking.jsonl",
                    safe_uri(uri), exc)
    io.write_json(context_file, ctx)
    return ctx


def end_parent(context_file: str | os.PathLike, status: str = "FINISHED") -> None:
    """Mark the parent run FINISHED or FAILED (called from ``onsuccess`` / ``onerror``)."""
    try:
        ctx = json.loads(Path(context_file).read_text())
        if ctx.get("parent_run_id"):
            _client(ctx["tracking_uri"], ctx.get("credentials_file")).set_terminated(ctx["parent_run_id"],
                                                                                    status=status)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not close the MLflow parent run: %s", exc)


def _log_params(client, run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    flat = {k: ("null" if v is None else str(v))[:6000] for k, v in flatten(params).items()}
    items = [Param(k, v) for k, v in sorted(flat.items())]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


class StageRun:
    """Handle for one stage's child run; every method is safe to call during a tracking outage."""

    def __init__(self, stage: str, out_dir: Path, ctx: dict, run_name: str | None):
        self.stage = stage
        self.out_dir = Path(out_dir)
        self.local_file = self.out_dir / "tracking.jsonl"
        self.ctx = ctx
        self.run_id: str | None = None
        self._client = None
        self._warned = False
        self._run_name = run_name or stage

    # -- local copy -------------------------------------------------------------------------------------------
    def _local(self, kind: str, payload: Any) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rec = {"time": time.time(), "kind": kind, "stage": self.stage, "payload": payload}
        with open(self.local_file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, default=str) + "\n")

    def _remote(self, fn, *args, **kwargs) -> None:
        if self._client is None or self.run_id is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            if _server_rejected(exc):  # a bad value or name: keep the server for the rest of the records
                log.warning("MLflow rejected a record (%s); it is kept in %s", str(exc).splitlines()[0],
                            self.local_file)
                return
            if not self._warned:
                log.warning("MLflow tracking failed (%s). The stage continues; records are kept in %s and can be "
                            "replayed with `alta tracking-sync %s`.", exc, self.local_file, self.local_file)
                self._warned = True
            self._client = None

    def _open(self, tags: dict) -> None:
        uri = self.ctx.get("tracking_uri")
        if not uri:
            return
        try:
            client = _client(uri, self.ctx.get("credentials_file"))
            exp_id = self.ctx.get("experiment_id")
            if exp_id is None:
                name = self.ctx.get("experiment") or "alta"
                exp = client.get_experiment_by_name(name)
                exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
            if self.ctx.get("parent_run_id"):
                tags = {**tags, "mlflow.parentRunId": self.ctx["parent_run_id"]}
            run = client.create_run(exp_id, run_name=self._run_name, tags=tags)
            self._client, self.run_id = client, run.info.run_id
        except Exception as exc:  # noqa: BLE001
            log.warning("MLflow tracking unavailable at %s (%s); logging locally to %s; replay it later with "
                        "`alta tracking-sync %s`", safe_uri(uri), exc, self.local_file, self.local_file)
            self._warned = True

    # -- public API -------------------------------------------------------------------------------------------
    def log_params(self, params: dict) -> None:
        """Log a (nested) dict of parameters, flattened to dotted keys."""
        self._local("params", params)
        self._remote(_log_params, self._client, self.run_id, params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log numeric metrics; non-finite values are kept locally but not sent (MLflow rejects them)."""
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        self._local("metrics", {"step": step, "values": clean})
        finite = {k: v for k, v in clean.items() if math.isfinite(v)}
        if finite and self._client is not None:
            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            items = [Metric(k, v, ts, step or 0) for k, v in sorted(finite.items())]
            self._remote(self._client.log_batch, self.run_id, metrics=items)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._local("tags", tags)
        if self._client is not None:
            for k, v in tags.items():
                self._remote(self._client.set_tag, self.run_id, k, str(v))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a file or folder as an artifact (the path is recorded locally either way)."""
        self._local("artifact", {"path": str(path), "artifact_path": artifact_path})
        if self._client is not None:
            fn = self._client.log_artifacts if Path(path).is_dir() else self._client.log_artifact
            self._remote(fn, self.run_id, str(path), artifact_path)

    def _close(self, status: str) -> None:
        self._local("end", {"status": status})
        if self.run_id is not None and self._client is None:
            # the server failed earlier: try once more so the run does not stay RUNNING if it is back
            try:
                self._client = _client(self.ctx["tracking_uri"], self.ctx.get("credentials_file"))
            except Exception:  # noqa: BLE001
                return
        if self._client is not None:
            self._remote(self._client.set_terminated, self.run_id, status)


def load_context() -> dict:
    """The tracking context of the current workflow, or a standalone one from ``MLFLOW_TRACKING_URI``."""
    path = os.environ.get(CONTEXT_ENV)
    if path and Path(path).exists():
        try:
            return json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            log.warning("unreadable tracking context %s (%s); logging locally only", path, exc)
            return {}
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return {"tracking_uri": uri, "experiment": os.environ.get("MLFLOW_EXPERIMENT_NAME", "alta")} if uri else {}


@contextlib.contextmanager
def stage_run(stage: str, params: dict | None, out_dir: str | os.PathLike,
              run_name: str | None = None) -> Iterator[StageRun]:
    """Open the child run for ``stage``; log ``params`` and timing; mark it FAILED if the body raises.

    ``out_dir`` is the stage's output folder; the local copy ``tracking.jsonl`` is written there.
    Tags: ``alta.stage``, ``alta.config_hash`` (of ``params``), ``alta.git_commit``, ``alta.slurm_job_id``.
    """
    ctx = load_context()
    run = StageRun(stage, Path(out_dir), ctx, run_name)
    tags = {"alta.stage": stage, "alta.config_hash": io.config_hash(params or {}), "alta.git_commit": git_commit(),
            "alta.slurm_job_id": os.environ.get("SLURM_JOB_ID", "none"),
            "alta.rank": os.environ.get("RANK", "0")}
    run._open(tags)
    run._local("tags", tags)
    if params is not None:
        run.log_params(params)
    t0 = time.time()
    try:
        yield run
    except BaseException:
        run.log_metrics({"wall_seconds": time.time() - t0})
        run._close("FAILED")
        raise
    run.log_metrics({"wall_seconds": time.time() - t0})
    run._close("FINISHED")


def sync(local_file: str | os.PathLike, tracking_uri: str, experiment: str = "alta",
         credentials_file: str | os.PathLike | None = None) -> str:
    """Replay a ``tracking.jsonl`` written during an outage into a new run; return the new run id."""
    client = _client(_resolve_uri(tracking_uri), credentials_file)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    records = [json.loads(line) for line in Path(local_file).read_text().splitlines() if line.strip()]
    tags = {"alta.synced_from": str(local_file)}
    for r in records:
        if r["kind"] == "tags":
            tags.update({k: str(v) for k, v in r["payload"].items()})
    run = client.create_run(exp_id, run_name=f"{records[0]['stage'] if records else 'stage'} (synced)", tags=tags)
    from mlflow.entities import Metric

    for r in records:
        if r["kind"] == "params":
            _log_params(client, run.info.run_id, r["payload"])
        elif r["kind"] == "metrics":
            ts = int(r["time"] * 1000)
            ms = [Metric(k, v, ts, r["payload"]["step"] or 0) for k, v in r["payload"]["values"].items()
                  if math.isfinite(v)]
            if ms:
                client.log_batch(run.info.run_id, metrics=ms)
        elif r["kind"] == "artifact" and Path(r["payload"]["path"]).exists():
            p = r["payload"]["path"]
            (client.log_artifacts if Path(p).is_dir() else client.log_artifact)(run.info.run_id, p,
                                                                               r["payload"]["artifact_path"])
    client.set_terminated(run.info.run_id)
    return run.info.run_id
