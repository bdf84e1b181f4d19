"""A real single-node SLURM cluster on this machine (Debian 12, root, no systemd): install, start, stop.

It runs Debian's slurmctld, slurmd, munge, and
slurmdbd with MariaDB (without accounting, submitit polls forever for a job that died without a
result). Every file lives in one directory; clients find it through ``SLURM_CONF``. Each daemon
runs in the foreground as a child of this process, so stopping kills exactly what was started.

    python tests/scale/slurm_cluster.py      # start one, print the SLURM_CONF to export, Ctrl-C stops it
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "sacct", "munged", "slurmdbd", "mariadbd", "mariadb-install-db"]
DB_PASSWORD = "rlhf-test"  # a throwaway database bound to 127.0.0.1, gone with the directory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], timeout: float = 60, **kw) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return out.stdout


def install() -> None:
    """apt-get the packages if a binary is missing (~30 s on a fresh machine)."""
    if all(shutil.which(b) for b in BINARIES):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError("SLURM is not installed and cannot be: the SLURM tests need root and apt-get "
                           f"(apt-get install {' '.join(PACKAGES)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = Path("/usr/sbin/policy-rc.d")  # keeps apt from starting the daemons it installs
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        _run(["apt-get", "update", "-q"], timeout=300, env=env)
        _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES], timeout=600, env=env)
    finally:
        if ours:
            policy.unlink()
    missing = [b for b in BINARIES if not shutil.which(b)]
    if missing:
        raise RuntimeError(f"apt-get installed {PACKAGES} but {missing} are still missing")


class SlurmCluster:
    """One node, one partition ``debug``; ``env`` holds what a client (sbatch, submitit) needs."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root or tempfile.mkdtemp(prefix="slurm-"))
        self.conf = self.root / "slurm.conf"
        self.env_extra = {"SLURM_CONF": str(self.conf)}  # what clients need on top of the environment
        self.env = {**os.environ, **self.env_extra}
        self.started: list[tuple[str, subprocess.Popen]] = []

    # -- start -----------------------------------------------------------------------------
    def start(self, timeout: float = 90) -> "SlurmCluster":
        install()
        try:
            self._munge()
            self._mariadb(timeout)
            self._slurmdbd(timeout)
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
            self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
            self._wait(lambda: "idle" in self.sinfo(), timeout, "the node to become idle")
        except Exception:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, cmd: list[str], **kw) -> subprocess.Popen:
        log = open(self.root / f"{name}.out", "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True, **kw)
        self.started.append((name, proc))
        time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited at once ({proc.returncode}):\n{self.log(name)}")
        return proc

    def _wait(self, ready, timeout: float, what: str) -> None:
        end = time.time() + timeout
        while time.time() < end:
            for name, proc in self.started:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} died ({proc.returncode}) waiting for {what}:\n{self.log(name)}")
            try:
                if ready():
                    return
            except (OSError, RuntimeError, subprocess.SubprocessError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"no {what} after {timeout:.0f} s; logs in {self.root}:\n" +
                           "\n".join(f"--- {n}\n{self.log(n)}" for n, _ in self.started))

    def log(self, name: str) -> str:
        files = [self.root / f"{name}.out", self.root / f"{name}.log"]
        return "\n".join(f.read_text(errors="replace")[-3000:] for f in files if f.is_file())

    def _munge(self) -> None:
        ok = subprocess.run(["sh", "-c", "munge -n | unmunge"], capture_output=True).returncode == 0
        if ok:
            return  # a munged is already running (not ours: left alone)
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        self._spawn("munged", ["munged", "--foreground", "--force"], user="munge", group="munge", extra_groups=[])
        self._wait(lambda: subprocess.run(["sh", "-c", "munge -n | unmunge"], capture_output=True).returncode == 0,
                   20, "munge")

    def _mariadb(self, timeout: float) -> None:
        db, self.db_port, self.db_socket = self.root / "db", _free_port(), str(self.root / "mysqld.sock")
        _run(["mariadb-install-db", "--no-defaults", f"--datadir={db}", "--user=root",
              "--auth-root-authentication-method=socket", "--skip-test-db"], timeout=120)
        self._spawn("mariadbd", ["mariadbd", "--no-defaults", f"--datadir={db}", "--user=root",
                                 f"--socket={self.db_socket}", f"--port={self.db_port}", "--bind-address=127.0.0.1",
                                 f"--pid-file={self.root / 'mysqld.pid'}", "--skip-log-bin"])
        sql = ["mariadb", "--no-defaults", f"--socket={self.db_socket}", "-uroot", "-e"]
        self._wait(lambda: subprocess.run([*sql, "SELECT 1"], capture_output=True).returncode == 0, timeout, "MariaDB")
        _run([*sql, f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}'; "
                    "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"])

    def _slurmdbd(self, timeout: float) -> None:
        self.dbd_port, host = _free_port(), socket.gethostname().split(".")[0]
        dbd = self.root / "slurmdbd.conf"
        dbd.write_text(f"""AuthType=auth/munge
DbdHost=localhost
DbdPort={self.dbd_port}
SlurmUser=root
LogFile={self.root}/slurmdbd.log
PidFile={self.root}/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.db_port}
StorageUser=slurm
StoragePass={DB_PASSWORD}
StorageLoc=slurm_acct_db
""")
        dbd.chmod(0o600)
        self._write_slurm_conf(host)
        self._spawn("slurmdbd", ["slurmdbd", "-D"])  # finds slurmdbd.conf next to $SLURM_CONF
        self._wait(lambda: subprocess.run(["sacctmgr", "-n", "list", "cluster"], env=self.env,
                                          capture_output=True, timeout=10).returncode == 0, timeout, "slurmdbd")
        _run(["sacctmgr", "-i", "add", "cluster", "rlhftest"], env=self.env)

    def _write_slurm_conf(self, host: str) -> None:
        topo = _run(["slurmd", "-C"]).split("\n")[0]  # "NodeName=vm CPUs=2 ... RealMemory=N"
        cpus = re.search(r"\bCPUs=(\d+)", topo).group(1)
        layout = " ".join(re.findall(r"\b(?:Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=\d+", topo))
        memory = int(int(re.search(r"RealMemory=(\d+)", topo).group(1)) * 0.9)
        self.conf.write_text(f"""ClusterName=rlhftest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire (default 120 s) is also how long a requeued job waits before it starts again
AuthInfo=cred_expire=10
StateSaveLocation={self.root}/state
SlurmdSpoolDir={self.root}/spool
SlurmctldPidFile={self.root}/slurmctld.pid
SlurmdPidFile={self.root}/slurmd.pid
SlurmctldLogFile={self.root}/slurmctld.log
SlurmdLogFile={self.root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
EnforcePartLimits=ALL
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={self.dbd_port}
JobAcctGatherType=jobacct_gather/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} {layout} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
        for d in ("state", "spool"):
            (self.root / d).mkdir(exist_ok=True)

    # -- use -------------------------------------------------------------------------------
    def sinfo(self) -> str:
        return _run(["sinfo", "-h", "-o", "%T"], env=self.env, timeout=10)

    def jobs(self) -> list[tuple[str, str, str]]:
        """(job id, state, name) of every job in the queue."""
        out = _run(["squeue", "-h", "-o", "%i|%T|%j"], env=self.env, timeout=10)
        return [tuple(line.split("|")) for line in out.splitlines() if line]

    def scancel(self, *job_ids: str) -> None:
        _run(["scancel", *job_ids], env=self.env)

    # -- stop ------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel every job, then stop the daemons this object started, newest first."""
        if any(n == "slurmctld" for n, p in self.started if p.poll() is None):
            subprocess.run(["scancel", "--full", "--user", "root"], env=self.env, capture_output=True, timeout=10)
            end = time.time() + 20
            while time.time() < end and self._queue_busy():
                time.sleep(0.5)
        for name, proc in reversed(self.started):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self.started.clear()

    def _queue_busy(self) -> bool:
        try:
            return bool(self.jobs())
        except (RuntimeError, subprocess.SubprocessError):
            return False

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    cluster = SlurmCluster(Path(sys.argv[1]) if len(sys.argv) > 1 else None).start()
    print(f"SLURM is up: export SLURM_CONF={cluster.conf}   (Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        cluster.stop()
