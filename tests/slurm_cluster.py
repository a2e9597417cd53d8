"""A one-node SLURM cluster on loopback, private to one test.

Everything lives in one folder: its own munge key and socket, ``slurm.conf``
and ``gres.conf`` (one node whose GPU GRES are backed by ``/dev/null``, so
the GPU request path is exercised on a machine without a GPU), state, spool and
logs, and free TCP ports, so it neither reads nor disturbs a system SLURM.
Clients find it through ``SLURM_CONF`` (see :attr:`SlurmCluster.env`).
The daemons run in the foreground as children of the test, and
:meth:`SlurmCluster.stop` ends exactly those processes, by their pids.

There is no accounting (no slurmdbd): ``sacct`` and ``sacctmgr`` do not work,
and finished jobs stay visible in ``squeue`` for ``MinJobAge`` seconds; every
job also gets a line in the job-completion file (:attr:`SlurmCluster.jobcomp`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

APT_PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = ["munged", "slurmctld", "slurmd"]
CLIENTS = ["sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel"]
PARTITION = "debug"
NODE = "node1"
# Finished jobs stay in squeue this long: the SLURM executor's squeue status
# check needs MinJobAge >= 3 x its first status interval.
MIN_JOB_AGE = 600


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be installed or started here (the test skips, naming why)."""


def _missing_programs() -> list[str]:
    return [name for name in DAEMONS + CLIENTS if shutil.which(name) is None]


def ensure_installed(timeout: int = 300) -> None:
    """Install the Debian packages if a program is missing (root and apt only)."""
    if not _missing_programs():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SlurmUnavailable(
            f"{', '.join(_missing_programs())} not found, and installing them needs root and "
            f"apt-get: apt-get install -y --no-install-recommends {' '.join(APT_PACKAGES)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:  # a machine whose package lists were never fetched
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=timeout)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0 or _missing_programs():
        raise SlurmUnavailable(f"`{' '.join(cmd)}` failed:\n{proc.stdout[-2000:]}{proc.stderr}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _hardware() -> dict[str, int]:
    """This machine as `slurmd -C` sees it: CPUs, sockets, cores, threads, memory (MB)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
    keys = ["CPUs", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory"]
    return {key: int(fields[key]) for key in keys}


@dataclass
class SlurmCluster:
    """A running loopback cluster: one node (:data:`NODE`), one partition."""

    root: Path
    cpus: int
    partition: str = PARTITION
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    _outputs: list[IO[str]] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment for SLURM clients (and snakemake) to talk to this cluster.

        PATH starts with a folder whose `srun` sets SLURM_CONF and runs the real
        srun: the executor's job step (snakemake-executor-plugin-slurm-jobstep)
        drops SLURM_* variables, SLURM_CONF included, before its srun inside a
        job. A real cluster's config is at /etc/slurm or served by slurmctld,
        where srun finds it without the variable; this one's is not.
        """
        path = f"{self.root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": path}

    @property
    def ctld_log(self) -> Path:
        return self.root / "log" / "slurmctld.log"

    @property
    def jobcomp(self) -> Path:
        return self.root / "log" / "jobcomp.txt"

    def run(self, *args: str, timeout: int = 30) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(args), capture_output=True, text=True, env=self.env, timeout=timeout
        )

    def logs(self) -> str:
        """The daemons' logs, for an assertion message."""
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")  # noqa: SIM115 (closed by stop)
        self._outputs.append(log)
        self.processes[name] = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )

    def _wait_for(self, what: str, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise SlurmUnavailable(
                        f"{name} exited with {proc.returncode} while waiting for {what}\n"
                        + self.logs()
                    )
            if ready():
                return
            time.sleep(0.2)
        raise SlurmUnavailable(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")

    def start(self, timeout: float = 60) -> SlurmCluster:
        """Start munged, slurmctld and slurmd, and wait until the node is idle;
        if that fails, stop what did start and raise SlurmUnavailable."""
        try:
            return self._start_all(timeout)
        except BaseException:
            self.stop()
            raise

    def _start_all(self, timeout: float) -> SlurmCluster:
        munge_socket = self.root / "munge" / "munge.socket"
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self._start(
            "munged",
            [
                shutil.which("munged"),
                "--foreground",
                "--force",
                f"--socket={munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={self.root / 'munge' / 'munged.seed'}",
            ],
        )
        self._wait_for("munged's socket", munge_socket.exists, timeout)
        self._start("slurmctld", [shutil.which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait_for("slurmctld", lambda: self.run("scontrol", "ping").returncode == 0, timeout)
        self._start("slurmd", [shutil.which("slurmd"), "-D", "-N", NODE, "-f", str(self.conf)])

        def node_idle() -> bool:
            state = self.run("sinfo", "-h", "-N", "-n", NODE, "-o", "%T").stdout.strip()
            return state == "idle"

        self._wait_for(f"node {NODE} to be idle", node_idle, timeout)
        return self

    def stop(self, timeout: float = 15) -> None:
        """Cancel this cluster's jobs, then end the daemons this object started
        (slurmd first, munged last)."""
        slurmctld = self.processes.get("slurmctld")
        if slurmctld is not None and slurmctld.poll() is None:
            # SLURM_CONF points at this cluster only: no other cluster's jobs are touched.
            self.run("scancel", "--full", f"--partition={self.partition}")
            deadline = time.monotonic() + timeout
            while (
                time.monotonic() < deadline
                and self.run(
                    "squeue", "-h", "-t", "RUNNING,COMPLETING,PENDING", "-o", "%i"
                ).stdout.strip()
            ):
                time.sleep(0.5)
        for name in reversed(DAEMONS):
            proc = self.processes.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        for output in self._outputs:
            output.close()
        self._outputs.clear()

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_config(
    root: Path, min_cpus: int = 0, min_memory_mb: int = 0, gpus: int = 1
) -> SlurmCluster:
    """Write slurm.conf and gres.conf for a one-node cluster under ``root``.

    The node has this machine's CPUs and memory, or at least ``min_cpus`` and
    ``min_memory_mb`` (``config_overrides``: SLURM believes the config, not the
    hardware). sbatch refuses a job that asks for more than any node has, and
    a small CI runner must still take the profile's requests; more CPUs than
    cores let small jobs run side by side. Memory is not a consumable (CR_Core).
    The node has ``gpus`` GPUs as far as SLURM knows (at most 2), each a
    character device that is not one (/dev/null, /dev/zero), so GPU requests
    are scheduled on a machine without a GPU.
    """
    ensure_installed()
    hw = _hardware()
    if hw["CPUs"] < min_cpus:
        hw.update(CPUs=min_cpus, SocketsPerBoard=1, CoresPerSocket=min_cpus, ThreadsPerCore=1)
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub).chmod(0o755 if sub == "munge" else 0o700)  # clients reach the socket
    hostname = socket.gethostname()
    log = root / "log"
    conf = f"""\
ClusterName=mmaligntest
SlurmctldHost={hostname}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root / "munge" / "munge.socket"}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={log / "slurmctld.log"}
SlurmdLogFile={log / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={root / "plugstack.conf"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={log / "jobcomp.txt"}
SchedulerType=sched/builtin
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
GresTypes=gpu
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge={MIN_JOB_AGE}
KillWait=5
InactiveLimit=0
NodeName={NODE} NodeHostname={hostname} NodeAddr=127.0.0.1 CPUs={hw["CPUs"]} \
Sockets={hw["SocketsPerBoard"]} CoresPerSocket={hw["CoresPerSocket"]} \
ThreadsPerCore={hw["ThreadsPerCore"]} RealMemory={max(hw["RealMemory"], min_memory_mb)} \
Gres=gpu:{gpus} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""
    (root / "slurm.conf").write_text(conf)
    # AutoDetect off and a File per GPU: a GPU line with a Count but no File is rejected.
    devices = ["/dev/null", "/dev/zero"][:gpus]
    (root / "gres.conf").write_text(
        "AutoDetect=off\n" + "".join(f"Name=gpu File={dev}\n" for dev in devices)
    )
    (root / "plugstack.conf").write_text("")
    (root / "bin").mkdir(exist_ok=True)
    srun = root / "bin" / "srun"
    srun.write_text(
        f'#!/bin/sh\nSLURM_CONF={root / "slurm.conf"} exec {shutil.which("srun")} "$@"\n'
    )
    srun.chmod(0o755)
    return SlurmCluster(root=root, cpus=hw["CPUs"])
