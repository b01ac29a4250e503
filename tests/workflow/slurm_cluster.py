"""A one-node SLURM cluster on localhost for the workflow tests (needs root and the slurm packages).

The daemons (munged, slurmctld, slurmd) and every command that talks to them run inside private
namespaces held open by one ``sleep`` process started with ``unshare``:

- a network namespace: SLURM binds 0.0.0.0 with no option to do otherwise, so nothing must be
  reachable from outside. ``lo`` gets an extra /32 address there (with loopback alone SLURM's
  address lookup finds nothing usable: "Address family not supported", clients hang).
- a mount namespace: the jobstep plugin strips ``SLURM_CONF`` before its nested ``srun``, which then
  reads ``/etc/slurm/slurm.conf``; the folder holding the cluster's own config is bind-mounted
  over ``/etc/slurm``, visible only inside the namespace, so the machine's ``/etc`` is never
  changed (ENVIRONMENT.md's "copy it to /etc/slurm/slurm.conf", without the global side effect).

Commands enter with ``nsenter --target <holder pid> --net --mount``. Munge runs on its own socket and
key under the cluster's folder. ``stop`` cancels the jobs, ends the daemons by their pid files, then
whatever else runs in the private network namespace (job steps: only this cluster starts processes
there), then the holder.
See ``docs/scale-out.md`` (packages to install) and ENVIRONMENT.md ("A real cluster on one machine").
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Programs the cluster needs, and the Debian package of each.
REQUIRED_PROGRAMS = {
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "squeue": "slurm-client",
    "srun": "slurm-client",
    "scontrol": "slurm-client",
    "munged": "munge",
    "mungekey": "munge",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "ip": "iproute2",
}

#: The extra loopback address inside the private network namespace (never routed anywhere).
EXTRA_ADDRESS = "10.217.0.1/32"
ETC_SLURM_CONF = Path("/etc/slurm/slurm.conf")
PID_FILES = ("run/slurmd.pid", "run/slurmctld.pid", "munge/munged.pid")


def missing_requirements() -> str | None:
    """Why a cluster cannot be started here (a skip reason), or None when it can."""
    missing = sorted(
        {package for program, package in REQUIRED_PROGRAMS.items() if not shutil.which(program)}
    )
    if missing:
        return (
            "SLURM test cluster needs the Debian packages "
            f"{', '.join(missing)} (apt-get install -y --no-install-recommends "
            "slurmctld slurmd slurm-client munge)"
        )
    if os.geteuid() != 0:
        return "SLURM test cluster needs root (namespaces, SlurmUser=root)"
    return None


def slurm_conf(folder: Path, node: str, *, cpus: int, memory_mb: int) -> str:
    """A minimal single-node slurm.conf whose state, logs and pid files live under ``folder``."""
    return f"""\
ClusterName=circuit-insights-test
SlurmctldHost={node}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/run/slurmctld.pid
SlurmdPidFile={folder}/run/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, each job takes the node's whole memory and jobs run one at a time.
DefMemPerCPU=1000
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# squeue status polling sees finished jobs for this long (>= 3x the plugin's first wait). An hour,
# so that the test still lists every job of the run (the first ones finish minutes before the end).
MinJobAge=3600
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={node} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    """A running one-node cluster; ``run`` executes commands inside its namespaces."""

    folder: Path
    holder: subprocess.Popen[bytes]
    node: str
    stopped: bool = field(default=False)

    @property
    def conf(self) -> Path:
        return self.folder / "etc" / "slurm.conf"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of commands that talk to the cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf), **(extra or {})}

    def command(self, args: Sequence[str], cwd: str | os.PathLike[str] | None = None) -> list[str]:
        """``args`` prefixed so that they run inside the cluster's namespaces, in ``cwd`` (entering
        a mount namespace would otherwise start them in ``/``)."""
        folder = Path(cwd or os.getcwd()).resolve()
        return [
            "nsenter",
            f"--target={self.holder.pid}",
            "--net",
            "--mount",
            f"--wd={folder}",
            *args,
        ]

    def run(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        **kwargs,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` inside the namespaces (text output captured unless told otherwise)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(args, cwd), env=self.env(env), **kwargs)

    def daemon_pids(self) -> dict[str, int | None]:
        """munged, slurmctld and slurmd by their pid files (None: no pid file)."""
        return {Path(name).stem: _pid_of(self.folder / name) for name in PID_FILES}

    def logs(self) -> str:
        """The daemons' logs, for failure messages."""
        parts = []
        for log in sorted((self.folder / "log").glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job, end slurmd, slurmctld and munged by their pid files, then what else
        runs in the private network namespace (job steps), then the namespace holder."""
        if self.stopped:
            return
        if self.holder.poll() is None:
            try:
                self.run(["scancel", "--full", "--signal=KILL", "--partition=main"], timeout=15)
            except subprocess.TimeoutExpired:
                pass  # the daemons are ended below either way
        pids = [_pid_of(self.folder / name) for name in PID_FILES]
        _terminate([pid for pid in pids if pid is not None])
        # What is left in the private network namespace was started by this cluster (job steps).
        _terminate(_processes_in_namespace(self.holder.pid, exclude=self.holder.pid))
        if self.holder.poll() is None:
            self.holder.terminate()
            try:
                self.holder.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.holder.kill()
                self.holder.wait(timeout=5)
        self.stopped = True


def _pid_of(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _processes_in_namespace(holder_pid: int, exclude: int) -> list[int]:
    """Processes in the network namespace of ``holder_pid`` (none when it has ended)."""
    try:
        namespace = os.readlink(f"/proc/{holder_pid}/ns/net")
    except OSError:
        return []
    if namespace == os.readlink("/proc/self/ns/net"):
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != exclude:
            try:
                if os.readlink(entry / "ns" / "net") == namespace:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _terminate(pids: Sequence[int], timeout: float = 5.0) -> None:
    """SIGTERM ``pids``, SIGKILL those that outlive ``timeout``."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_for(predicate, timeout: float, what: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError(f"SLURM test cluster: {what} within {timeout:.0f} s\n{cluster.logs()}")


def start_cluster(
    folder: Path, *, cpus: int | None = None, memory_mb: int = 16000, timeout: float = 30.0
) -> SlurmCluster:
    """Start munged, slurmctld and slurmd in private namespaces; wait until the node is idle.

    ``folder`` holds the config, munge key and socket, state, spool, logs and pid files. The
    caller must call :meth:`SlurmCluster.stop` (also when a test fails).
    """
    reason = missing_requirements()
    if reason is not None:
        raise RuntimeError(reason)
    folder = Path(folder).resolve()
    for sub in ("etc", "munge", "state", "spool", "run", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(folder / "munge", 0o700)
    node = socket.gethostname().split(".")[0]
    cpus = cpus or os.cpu_count() or 1
    conf = folder / "etc" / "slurm.conf"
    conf.write_text(slurm_conf(folder, node, cpus=cpus, memory_mb=memory_mb))

    holder = subprocess.Popen(
        ["unshare", "--net", "--mount", "--propagation", "private", "sleep", "infinity"],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    cluster = SlurmCluster(folder=folder, holder=holder, node=node)
    try:
        _wait_for(
            lambda: (
                Path(f"/proc/{holder.pid}/ns/net").exists()
                and os.readlink(f"/proc/{holder.pid}/ns/net") != os.readlink("/proc/self/ns/net")
            ),
            10,
            "the private namespaces did not appear",
            cluster,
        )
        setup = (
            "set -e; ip link set lo up; "
            f"ip addr add {EXTRA_ADDRESS} dev lo; "
            f"mkdir -p {ETC_SLURM_CONF.parent}; "
            f"mount --bind {conf.parent} {ETC_SLURM_CONF.parent}"
        )
        _checked(cluster.run(["sh", "-c", setup]), "namespace setup", cluster)

        key = folder / "munge" / "munge.key"
        _checked(
            cluster.run(["mungekey", "--create", "--force", f"--keyfile={key}"]),
            "mungekey",
            cluster,
        )
        os.chmod(key, 0o400)
        _checked(
            cluster.run(
                [
                    "munged",
                    "--force",
                    f"--socket={folder}/munge/munge.socket",
                    f"--key-file={key}",
                    f"--pid-file={folder}/munge/munged.pid",
                    f"--log-file={folder}/log/munged.log",
                    f"--seed-file={folder}/munge/munged.seed",
                ]
            ),
            "munged",
            cluster,
        )
        _checked(cluster.run(["slurmctld", "-f", str(conf)]), "slurmctld", cluster)
        _checked(cluster.run(["slurmd", "-f", str(conf)]), "slurmd", cluster)

        def node_idle() -> bool:
            done = cluster.run(["sinfo", "--noheader", "--format=%t"], timeout=15)
            return done.returncode == 0 and done.stdout.strip() in ("idle", "idle~", "mix")

        _wait_for(node_idle, timeout, "the node did not become idle", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _checked(
    done: subprocess.CompletedProcess[str], what: str, cluster: SlurmCluster
) -> subprocess.CompletedProcess[str]:
    if done.returncode != 0:
        raise RuntimeError(
            f"SLURM test cluster: {what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            f"\n{cluster.logs()}"
        )
    return done
