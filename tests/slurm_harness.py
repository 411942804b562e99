"""A throwaway single-node Slurm cluster and MLflow tracking server on localhost, for the workflow tests.

Contract:

* :func:`start_cluster(root)` starts ``munged`` (own key, socket, pid, log and seed files under ``root/munge``),
  then ``slurmctld -D`` and ``slurmd -D`` from a generated ``root/slurm.conf`` (free high ports, state/spool/log
  files under ``root``, no accounting, ``proctrack/linuxproc`` + ``task/none`` so no cgroups are needed), and waits
  until ``sinfo`` reports the node idle. It returns a :class:`SlurmCluster` whose ``env`` (``SLURM_CONF`` set)
  makes ``sbatch``/``squeue``/``scancel`` and Snakemake's Slurm executor talk to this cluster only.
* :func:`start_mlflow_server(root)` starts ``python -m mlflow server`` (sqlite backend, proxied artifact store) on a
  free port and waits for ``/health``; it returns an :class:`MlflowServer` with its ``url``. With ``auth=True`` it
  runs MLflow's basic-auth app (``--app-name basic-auth``, the server recipe of docs/cluster.md): a generated auth config
  (``default_permission = NO_PERMISSIONS``, users in ``root/basic_auth.db``), a random admin password and Flask
  secret; :meth:`MlflowServer.create_user` adds a user through the admin REST API.
* Both raise :class:`Unavailable` (with the daemon log tails in the message) when the machine cannot host them:
  not root, binaries missing, or daemons not up within the timeout. Tests turn that into ``pytest.skip``.
* ``stop()`` ends only the processes this module started (by pid), politely first.

The node is CPU-only (no GRES): training stages run their torchrun workers, or srun tasks, as CPU processes with
gloo.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


class Unavailable(RuntimeError):
    """The environment cannot host the throwaway service (a reason to skip, never to fail)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _wait(predicate, timeout: float, step: float = 0.5) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return False


def node_resources() -> tuple[int, int]:
    """(CPUs, RealMemory in MB) of this machine, as slurmd itself would count them."""
    cpus = len(os.sched_getaffinity(0))
    with open("/proc/meminfo") as fh:
        kb = next(int(line.split()[1]) for line in fh if line.startswith("MemTotal:"))
    # slurmd rejects a node whose configured memory exceeds what it finds; keep a margin for the OS.
    return cpus, int(kb / 1024 * 0.9)


def slurm_conf(root: Path, host: str, munge_socket: Path, cpus: int, mem_mb: int,
               ctld_port: int, slurmd_port: int, partition: str = "debug") -> str:
    """The slurm.conf of a one-node, accounting-free cluster; every path and port belongs to ``root``."""
    return f"""\
ClusterName=altatest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# Finished jobs stay visible to `squeue --states=all` for 5 minutes: the executor's squeue status check polls at
# growing intervals and would wait forever for a job that vanished before it looked.
MinJobAge=300
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2,defer_batch=0
InactiveLimit=0
KillWait=10
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    node: str
    partition: str
    cpus: int
    mem_mb: int
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    config_mode: str = ""

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a Slurm client command (sinfo, squeue, scontrol, ...) against this cluster."""
        proc = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}\n{self.logs()}")
        return proc

    def logs(self, n: int = 2000) -> str:
        parts = [f"--- {p.name}\n{_tail(p, n)}" for p in sorted((self.root / "log").glob("*.log"))]
        return "\n".join(parts)

    def node_state(self) -> str:
        r = self.run("sinfo", "--noheader", "-N", "-o", "%T", check=False, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else f"error: {r.stderr.strip()}"

    def wait_idle(self, timeout: float = 60) -> bool:
        """Wait until no job is queued or running (after a test cancelled or requeued jobs)."""
        def empty():
            r = self.run("squeue", "--noheader", "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING,REQUEUED",
                         check=False, timeout=10)
            return r.returncode == 0 and not r.stdout.strip()

        return _wait(empty, timeout)

    def stop(self) -> None:
        # Cancel what is left of this cluster's jobs (a test that failed part-way), so that no job step outlives
        # slurmd; then slurmd before the controller, and munge last.
        if all(self.procs.get(n) is not None and self.procs[n].poll() is None for n in ("slurmctld", "slurmd")):
            ids = self.run("squeue", "--noheader", "-o", "%i", check=False, timeout=10).stdout.split()
            if ids:
                self.run("scancel", "--full", *ids, check=False, timeout=10)
                self.wait_idle(timeout=20)
        for name in ("slurmd", "slurmctld", "munged"):
            _stop(self.procs.get(name))


def start_cluster(root: Path, timeout: float = 30, partition: str = "debug") -> SlurmCluster:
    """Start munged + slurmctld + slurmd under ``root``; raise :class:`Unavailable` if they cannot run here."""
    if os.geteuid() != 0:
        raise Unavailable("a throwaway Slurm cluster needs root (SlurmUser=root, munged key ownership)")
    bins = {name: _which(name) for name in ("munged", "mungekey", "slurmctld", "slurmd", "sinfo", "sbatch",
                                            "squeue", "scancel", "scontrol", "srun")}
    missing = [n for n, p in bins.items() if p is None and n != "mungekey"]
    if missing:
        raise Unavailable(f"Slurm/munge binaries not found: {', '.join(missing)} (apt-get install slurm-wlm munge)")

    root = Path(root)
    for sub in ("munge", "state", "spool", "run", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "munge", 0o700)
    host = socket.gethostname().split(".")[0]
    cpus, mem_mb = node_resources()
    # Make sure client commands read our config only, not an /etc/slurm of the machine or a DNS SRV record.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
    env["SLURM_CONF"] = str(root / "slurm.conf")
    cluster = SlurmCluster(root=root, conf=root / "slurm.conf", node=host, partition=partition, cpus=cpus,
                           mem_mb=mem_mb, env=env)
    try:
        _start_munge(cluster, bins)
        cluster.conf.write_text(slurm_conf(root, host, root / "munge" / "munge.socket", cpus, mem_mb,
                                           free_port(), free_port(), partition))
        log = open(root / "log" / "daemons.out", "ab")
        cluster.procs["slurmctld"] = subprocess.Popen([bins["slurmctld"], "-D", "-i", "-f", str(cluster.conf)],
                                                      env=env, stdout=log, stderr=log, start_new_session=True)
        if not _wait(lambda: cluster.run("scontrol", "ping", check=False, timeout=5).stdout.count("UP") > 0,
                     timeout):
            raise Unavailable(f"slurmctld did not answer within {timeout:.0f}s\n{cluster.logs()}")
        cluster.procs["slurmd"] = subprocess.Popen(_slurmd_command(cluster, bins["slurmd"]), env=cluster.env,
                                                   stdout=log, stderr=log, start_new_session=True)
        slurmd = cluster.procs["slurmd"]
        if not _wait(lambda: slurmd.poll() is not None or cluster.node_state() == "idle", timeout) \
                or slurmd.poll() is not None:
            raise Unavailable(f"node {host} not idle within {timeout:.0f}s (state: {cluster.node_state()})\n"
                              f"{cluster.logs()}")
        for name, p in cluster.procs.items():
            if p.poll() is not None:
                raise Unavailable(f"{name} exited with {p.returncode}\n{cluster.logs()}")
    except Unavailable:
        cluster.stop()
        raise
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        cluster.stop()
        raise Unavailable(f"could not start Slurm: {exc}\n{cluster.logs()}") from exc
    return cluster


def _slurmd_command(cluster: SlurmCluster, slurmd: str) -> list[str]:
    """slurmd, arranged so that commands inside jobs find this cluster's slurm.conf.

    Snakemake's slurm-jobstep executor runs each job's command under an inner ``srun`` whose environment it strips
    of every ``SLURM_*`` variable except the job's identity, ``SLURM_CONF`` included; on a real cluster that srun
    finds the config at the default ``/etc/slurm/slurm.conf``. We give the jobs the same: slurmd (hence every job
    it starts) runs in a private mount namespace where ``root/etc`` is bind-mounted over ``/etc/slurm``; nothing
    changes outside it. Where mount namespaces are not permitted, a ``root/bin/srun`` first on ``PATH`` restores
    ``SLURM_CONF`` before calling the real srun.
    """
    etc = cluster.root / "etc"
    etc.mkdir(exist_ok=True)
    shutil.copyfile(cluster.conf, etc / "slurm.conf")
    base = [slurmd, "-D", "-N", cluster.node, "-f", str(cluster.conf)]
    unshare = _which("unshare")
    if unshare and Path("/etc/slurm").is_dir():
        probe = subprocess.run([unshare, "--mount", "--propagation", "private", "mount", "--bind", str(etc),
                                "/etc/slurm"], capture_output=True, text=True, timeout=10)
        if probe.returncode == 0:
            cluster.config_mode = "mount namespace: /etc/slurm -> " + str(etc)
            return [unshare, "--mount", "--propagation", "private", "sh", "-c",
                    'mount --bind "$0" /etc/slurm && exec "$@"', str(etc), *base]
    real_srun = _which("srun")
    bindir = cluster.root / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "srun").write_text(f'#!/bin/sh\nSLURM_CONF="{cluster.conf}" exec "{real_srun}" "$@"\n')
    os.chmod(bindir / "srun", 0o755)
    cluster.env["PATH"] = f"{bindir}:{cluster.env.get('PATH', '')}"
    cluster.config_mode = f"srun wrapper {bindir / 'srun'} (no mount namespace)"
    return base


def _start_munge(cluster: SlurmCluster, bins: dict[str, str | None]) -> None:
    d = cluster.root / "munge"
    key = d / "munge.key"
    if bins.get("mungekey"):
        subprocess.run([bins["mungekey"], "--create", f"--keyfile={key}"], check=True, capture_output=True)
    else:
        key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    log = d / "munged.log"
    # munged daemonizes itself; it checks that key, socket dir and log are not accessible to others.
    r = subprocess.run([bins["munged"], f"--socket={d / 'munge.socket'}", f"--key-file={key}",
                        f"--pid-file={d / 'munged.pid'}", f"--log-file={log}", f"--seed-file={d / 'munged.seed'}",
                        "--force", "--num-threads=2"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise Unavailable(f"munged failed to start ({r.returncode}): {r.stderr.strip()}\n{_tail(log)}")
    pid = int((d / "munged.pid").read_text().strip())
    cluster.procs["munged"] = _PidProcess(pid)
    (cluster.root / "log" / "munged.log").unlink(missing_ok=True)
    (cluster.root / "log" / "munged.log").symlink_to(log)


class _PidProcess:
    """A started daemon known only by pid (munged forks); enough of Popen's interface for :func:`_stop`."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        try:
            os.kill(self.pid, 0)
            return None
        except ProcessLookupError:
            self.returncode = 0
            return 0

    def send_signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float) -> int:
        if not _wait(lambda: self.poll() is not None, timeout, 0.1):
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
        return 0

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@dataclass
class MlflowServer:
    url: str
    proc: subprocess.Popen
    log: Path
    admin: tuple[str, str] | None = None  # (user, password) of the auth app's admin; None without auth

    def request(self, method: str, path: str, body: dict | None = None,
                auth: tuple[str, str] | None = None) -> tuple[int, dict | str]:
        """(HTTP status, decoded body) of one REST call, with optional basic auth; HTTP errors are returned."""
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode())
        req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def create_user(self, username: str, password: str) -> None:
        status, body = self.request("POST", "/api/2.0/mlflow/users/create",
                                    {"username": username, "password": password}, auth=self.admin)
        if status != 200:
            raise RuntimeError(f"creating user {username} failed: HTTP {status}")

    def stop(self) -> None:
        # uvicorn runs workers as children of this process group's leader; end the group we created.
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def start_mlflow_server(root: Path, timeout: float = 90, auth: bool = False) -> MlflowServer:
    """``mlflow server`` with a sqlite backend and proxied artifacts under ``root``, waiting for ``/health``.

    ``auth``: the basic-auth app, listening on 127.0.0.1 only, with a random admin password (``server.admin``).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = root / "mlflow-server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # no GenAI job runner (background workers that only slow a small test machine down)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    admin = None
    if auth:
        admin = ("admin", secrets.token_urlsafe(16))
        ini = root / "basic_auth.ini"
        ini.write_text(f"""[mlflow]
default_permission = NO_PERMISSIONS
database_uri = sqlite:///{root / 'basic_auth.db'}
admin_username = {admin[0]}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# a verified login is trusted for 60 s instead of hashing the password again on every request
auth_cache_ttl_seconds = 60
""")
        os.chmod(ini, 0o600)
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_AUTH_ADMIN_PASSWORD=admin[1],
                   MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
        cmd += ["--app-name", "basic-auth"]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=fh, start_new_session=True, env=env)
    server = MlflowServer(url=f"http://127.0.0.1:{port}", proc=proc, log=log, admin=admin)

    def healthy() -> bool:
        if proc.poll() is not None:
            return True
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    if not _wait(healthy, timeout) or proc.poll() is not None:
        server.stop()
        raise Unavailable(f"mlflow server did not become healthy within {timeout:.0f}s\n{_tail(log)}")
    return server
