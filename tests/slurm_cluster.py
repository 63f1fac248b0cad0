"""A throw-away single-node SLURM cluster with job accounting, for tests that submit real jobs.

``LocalSlurm`` writes every config, key, spool, state, database and log into one temporary
directory, starts munged, mariadbd, slurmdbd, slurmctld and slurmd directly (no systemd) on free
loopback ports, and on exit stops only those processes, by PID. Clients reach it through
``LocalSlurm.env`` (``SLURM_CONF`` points at the private slurm.conf), so the system-wide
/etc/slurm and /etc/munge are never read, and two clusters can run side by side.

Why accounting: snakemake-executor-plugin-slurm polls job states with ``sacct`` and validates
``slurm_account`` with ``sacctmgr``; both need slurmdbd, and slurmdbd needs MariaDB.

Why root: the daemons run with SlurmUser=root (slurmd must be root to start job steps, and a
second unprivileged user would only add setup); munged alone runs as user ``munge``, which it
insists on. Without root the caller is skipped, never failed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = REPO / ".ci" / "install-slurm.sh"
REQUIRED_BINARIES = (
    "munged", "mariadbd", "mariadb-install-db", "mariadb", "slurmdbd", "slurmctld", "slurmd",
    "sbatch", "srun", "sinfo", "squeue", "sacct", "sacctmgr", "scancel",
)
# Variables that would point clients at another cluster or change how jobs are submitted.
FOREIGN_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SACCT_", "SINFO_")
FINAL_JOB_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL")
LOG_TAIL_LINES = 25
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class LocalSlurmError(RuntimeError):
    """The local cluster could not be set up or did not answer in time; the message holds log tails."""


def ensure_slurm_installed(*, install_timeout_s: float = 900.0) -> None:
    """Install the SLURM packages when missing (root only); skip the calling test without root."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (its daemons run as SlurmUser=root)")
    if all(shutil.which(binary) for binary in REQUIRED_BINARIES):
        return
    result = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=install_timeout_s)
    missing = [binary for binary in REQUIRED_BINARIES if not shutil.which(binary)]
    if result.returncode != 0 or missing:
        raise LocalSlurmError(
            f"{INSTALL_SCRIPT} exited {result.returncode}, still missing {missing}:\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )


class LocalSlurm:
    """Context manager: a private single-node cluster with one partition, one account and one fake GPU.

    ``env``: environment for client commands and Snakemake (SLURM_CONF set, foreign SLURM_* dropped).
    ``account``: exists in slurmdbd with the current user in it (unknown accounts are rejected).
    ``partition``: the only, and default, partition. ``cpus`` / ``memory_mb``: the node, as slurmd
    measures this machine. ``gpus``: one GPU backed by /dev/null, so ``sbatch --gpus=1`` schedules.
    """

    gpus = 1

    def __init__(
        self,
        *,
        cluster_name: str = "asdtest",
        account: str = "asd",
        partition: str = "debug",
        start_timeout_s: float = 120.0,
    ) -> None:
        self.cluster_name = cluster_name
        self.account = account
        self.partition = partition
        self.start_timeout_s = start_timeout_s
        self.user = pwd.getpwuid(os.geteuid()).pw_name  # SLURM identifies job owners by uid
        self.root: Path | None = None
        self.env: dict[str, str] = {}
        self.cpus = 0
        self.memory_mb = 0
        self._daemons: dict[str, subprocess.Popen] = {}

    # ---- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> "LocalSlurm":
        ensure_slurm_installed()
        self.root = Path(tempfile.mkdtemp(prefix="asd-slurm-"))
        self.root.chmod(0o755)  # munged (user munge) must traverse it to reach its own folder
        try:
            self._write_configs()
            self._start_munge()
            self._start_mariadb()
            self._start("slurmdbd", ["slurmdbd", "-D"])
            self._wait("slurmdbd answering sacctmgr", lambda: self._succeeds(["sacctmgr", "-n", "list", "cluster"]))
            self._create_associations()
            self._start("slurmctld", ["slurmctld", "-D"])
            self._start("slurmd", ["slurmd", "-D", "-N", "localhost"])
            self._wait("node localhost idle in sinfo", lambda: self._output(["sinfo", "-h", "-N", "-o", "%T"]) == "idle")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        ctld = self._daemons.get("slurmctld")
        if ctld is not None and ctld.poll() is None:
            # A job still running keeps slurmstepd and its children alive after slurmd stops.
            with contextlib.suppress(LocalSlurmError):
                self.run(["scancel", "--user", self.user], check=False)
                self._wait("squeue empty", lambda: not self._output(["squeue", "-h"]), timeout_s=30)
        for process in reversed(self._daemons.values()):
            _stop(process)
        self._daemons.clear()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    # ---- client helpers --------------------------------------------------------------------

    def run(self, args: list[str], *, check: bool = True, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
        """Run a command (mostly a SLURM client) in this cluster's environment; failures carry the log tails."""
        command = " ".join(args)
        try:
            result = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as error:
            raise LocalSlurmError(f"`{command}` did not return in {timeout_s:.0f} s\n{self.log_tails()}") from error
        if check and result.returncode != 0:
            raise LocalSlurmError(
                f"`{command}` exited {result.returncode}: {result.stderr.strip()}\n{self.log_tails()}"
            )
        return result

    def job_state(self, job_id: str) -> str:
        """The allocation's state as slurmdbd records it ('' until the job reaches the database)."""
        states = self.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State"]).stdout.split()
        return states[0] if states else ""

    def wait_for_job(self, job_id: str, *, timeout_s: float = 60.0) -> str:
        """Block until sacct shows the job in a final state; return that state."""
        self._wait(
            f"job {job_id} to finish in sacct",
            lambda: self.job_state(job_id).startswith(FINAL_JOB_STATES),
            timeout_s=timeout_s,
        )
        return self.job_state(job_id)

    def log_tails(self) -> str:
        """The last lines of every daemon's log, for failure messages."""
        logs = sorted((self.root / "log").glob("*.log")) if self.root else []
        return "\n".join(
            f"--- {log.name} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
            for log in logs
        )

    # ---- setup steps -----------------------------------------------------------------------

    def _write_configs(self) -> None:
        for folder in ("etc", "log", "ctld", "spool", "mysql", "munge"):
            (self.root / folder).mkdir()
        self._ports = ports = {name: _free_port() for name in ("slurmctld", "slurmd", "slurmdbd", "mariadb")}
        self._db_password = secrets.token_hex(12)
        self._munge_socket = self.root / "munge" / "munge.socket"
        hardware = _node_hardware()
        fields = dict(field.split("=", 1) for field in hardware.split())
        self.cpus, self.memory_mb = int(fields["CPUs"]), int(fields["RealMemory"])
        etc = self.root / "etc"
        # No *LogFile settings: in the foreground (-D) the daemons log to stderr, which _start captures.
        (etc / "slurm.conf").write_text(
            f"""\
ClusterName={self.cluster_name}
# slurmctld starts only on the host SlurmctldHost names; the address keeps traffic on loopback.
SlurmctldHost={socket.gethostname().split('.')[0]}(127.0.0.1)
SlurmctldPort={ports['slurmctld']}
SlurmdPort={ports['slurmd']}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self._munge_socket}
CredType=cred/munge
StateSaveLocation={self.root / 'ctld'}
SlurmdSpoolDir={self.root / 'spool'}
SlurmctldPidFile={self.root / 'ctld' / 'slurmctld.pid'}
SlurmdPidFile={self.root / 'spool' / 'slurmd.pid'}
# No cgroups and no systemd here: track job processes through /proc, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
KillWait=5
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={ports['slurmdbd']}
# Messages to slurmdbd are signed through the munge socket named here, not the one in AuthInfo.
AccountingStoragePass={self._munge_socket}
AccountingStorageTRES=gres/gpu
# Reject jobs of unknown accounts at submission, as production clusters do.
AccountingStorageEnforce=associations
NodeName=localhost NodeAddr=127.0.0.1 {hardware} Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName={self.partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
        )
        # gres/gpu counts only device files; /dev/null stands in for the one GPU (no CUDA behind it).
        (etc / "gres.conf").write_text("NodeName=localhost Name=gpu File=/dev/null\n")
        dbd_conf = etc / "slurmdbd.conf"  # slurmdbd looks for it next to $SLURM_CONF
        dbd_conf.write_text(
            f"""\
AuthType=auth/munge
AuthInfo=socket={self._munge_socket}
DbdHost=localhost
DbdPort={ports['slurmdbd']}
SlurmUser=root
PidFile={self.root / 'ctld' / 'slurmdbd.pid'}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports['mariadb']}
StorageUser=slurm
StoragePass={self._db_password}
StorageLoc=slurm_acct_db
"""
        )
        dbd_conf.chmod(0o600)  # slurmdbd refuses a config others can read: it holds a password
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV_PREFIXES)}
        self.env["SLURM_CONF"] = str(etc / "slurm.conf")
        # Inside a job, Snakemake's slurm-jobstep executor drops every SLURM_* variable (SLURM_CONF
        # too) before it calls srun, and srun then looks only at /etc/slurm/slurm.conf (which a real
        # cluster has). A first-on-PATH srun that sets SLURM_CONF keeps this cluster private.
        shim = self.root / "bin" / "srun"
        shim.parent.mkdir()
        shim.write_text(f'#!/bin/sh\nSLURM_CONF={self.env["SLURM_CONF"]} exec {shutil.which("srun")} "$@"\n')
        shim.chmod(0o755)
        self.env["PATH"] = f"{shim.parent}{os.pathsep}{self.env.get('PATH', os.defpath)}"

    def _start_munge(self) -> None:
        folder = self._munge_socket.parent
        key = folder / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        for path in (folder, key):
            shutil.chown(path, "munge", "munge")
        self._start(
            "munged",
            ["munged", "--foreground", f"--socket={self._munge_socket}", f"--key-file={key}",
             f"--pid-file={folder / 'munged.pid'}", f"--seed-file={folder / 'munged.seed'}"],
            user="munge",
        )
        self._wait("munged socket", self._munge_socket.exists)

    def _start_mariadb(self) -> None:
        datadir, socket_path = self.root / "mysql", self.root / "mysql.sock"
        self.run(["mariadb-install-db", "--no-defaults", f"--datadir={datadir}", "--user=root",
                  "--auth-root-authentication-method=socket", "--skip-test-db"], timeout_s=120)
        self._start(
            "mariadbd",
            ["mariadbd", "--no-defaults", f"--datadir={datadir}", f"--socket={socket_path}",
             f"--port={self._ports['mariadb']}", "--bind-address=127.0.0.1", "--skip-name-resolve",
             "--user=root", f"--pid-file={self.root / 'mysql.pid'}", "--innodb-buffer-pool-size=64M"],
        )
        client = ["mariadb", "--no-defaults", f"--socket={socket_path}", "--user=root"]
        self._wait("mariadbd accepting connections", lambda: self._succeeds(client + ["-e", "SELECT 1"]))
        self.run(client + ["-e", f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{self._db_password}'; "
                                 "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"])

    def _create_associations(self) -> None:
        """Cluster, account and user go in before slurmctld starts, so it loads them at once."""
        self.run(["sacctmgr", "-i", "add", "cluster", self.cluster_name])
        self.run(["sacctmgr", "-i", "add", "account", self.account, f"Cluster={self.cluster_name}",
                  "Description=asd tests", "Organization=asd"])
        self.run(["sacctmgr", "-i", "add", "user", self.user, f"Account={self.account}",
                  f"Cluster={self.cluster_name}"])

    # ---- process plumbing ------------------------------------------------------------------

    def _start(self, name: str, args: list[str], *, user: str | None = None) -> None:
        with open(self.root / "log" / f"{name}.log", "w") as log:
            self._daemons[name] = subprocess.Popen(
                args, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                user=user, group=user, extra_groups=[] if user else None, preexec_fn=_die_with_parent,
            )

    def _succeeds(self, args: list[str]) -> bool:
        return self.run(args, check=False).returncode == 0

    def _output(self, args: list[str]) -> str:
        return self.run(args, check=False).stdout.strip()

    def _wait(self, what: str, ready: Callable[[], bool], *, timeout_s: float | None = None) -> None:
        timeout_s = self.start_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            exited = [f"{name} exited {p.returncode}" for name, p in self._daemons.items() if p.poll() is not None]
            if exited:
                raise LocalSlurmError(f"while waiting for {what}: {', '.join(exited)}\n{self.log_tails()}")
            if ready():
                return
            time.sleep(0.25)
        raise LocalSlurmError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{self.log_tails()}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _node_hardware() -> str:
    """`slurmd -C` without NodeName/UpTime: CPUs, topology and RealMemory exactly as slurmd will measure them."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True, timeout=30).stdout
    return " ".join(field for field in out.splitlines()[0].split() if not field.startswith("NodeName="))


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the starting thread (the test process) dies, so a killed
    test run leaves no daemon behind."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop(process: subprocess.Popen, *, grace_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``: the one process we started, nothing else."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace_s)


def write_test_profile(
    *, source: Path, dest: Path, cluster: LocalSlurm, settings: Mapping[str, object] | None = None
) -> Path:
    """Copy the Snakemake profile ``source``/config.yaml into ``dest``, pointed at ``cluster``.

    Every partition becomes the cluster's, the account its account, and cpus_per_task / mem_mb / gpu
    are capped at what its one node has; ``settings`` are top-level profile keys set on top.
    CLI flags cannot do this: ``--default-resources`` / ``--set-resources`` replace the profile's
    whole mapping instead of merging into it. Returns ``dest``, for ``--profile``.
    """
    profile = yaml.safe_load((source / "config.yaml").read_text())
    defaults = profile.setdefault("default-resources", {})
    defaults.update(slurm_partition=cluster.partition, slurm_account=cluster.account)
    caps = {"cpus_per_task": cluster.cpus, "mem_mb": cluster.memory_mb, "gpu": cluster.gpus}
    for resources in [defaults, *profile.get("set-resources", {}).values()]:
        if "slurm_partition" in resources:
            resources["slurm_partition"] = cluster.partition
        for name, cap in caps.items():
            if isinstance(resources.get(name), int):
                resources[name] = min(resources[name], cap)
    profile.update(settings or {})
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest
