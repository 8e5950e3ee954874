"""A real single-node SLURM cluster for tests: munge + slurmctld + slurmd, private config under a temp dir.

Debian's packages (`apt-get install --no-install-recommends slurmctld slurmd slurm-client munge`) run
as root without systemd. `slurm_cluster()` starts the daemons with a private slurm.conf, sets
SLURM_CONF for this process (and so its children), puts a `sacct` stand-in first on PATH (the
cluster has no accounting database; submitit reads job states with sacct), waits until the node
is idle, yields, then cancels what is queued and stops the daemons. Without SLURM (or not as root)
the test skips, and when METANB_CI=1 (set by .ci/run) the skip is a failure.
"""
from __future__ import annotations
import contextlib, os, shutil, signal, socket, subprocess, tempfile, time
from pathlib import Path
import pytest

INSTALL_HINT = 'install it with `apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge` (Debian), as root'
DAEMONS = ('/usr/sbin/munged', '/usr/sbin/slurmctld', '/usr/sbin/slurmd')

# submitit asks `sacct -o JobID,State,NodeList --parsable2 -j IDS`; answer from squeue (jobs are kept MinJobAge s).
SACCT = r'''#!/bin/sh
echo "JobID|State|NodeList"
squeue --states=all --array --noheader --format='%i|%T|%N'
'''

def skip_or_fail(msg: str):
    if os.environ.get('METANB_CI', '') == '1': pytest.fail(f'{msg} (METANB_CI=1: the SLURM tests must run in CI)', pytrace=False)
    pytest.skip(msg)

def _conf(tmp: Path, host: str, cpus: int, mem: int, port: int) -> str:
    return f"""ClusterName=metanbtest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={tmp}/munge/munge.socket.2
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=batch_sched_delay=0
EnforcePartLimits=ALL
MinJobAge=3600
ReturnToService=2
SlurmctldPort={port}
SlurmdPort={port + 1}
StateSaveLocation={tmp}/state
SlurmdSpoolDir={tmp}/spool
SlurmctldPidFile={tmp}/run/slurmctld.pid
SlurmdPidFile={tmp}/run/slurmd.pid
SlurmctldLogFile={tmp}/log/slurmctld.log
SlurmdLogFile={tmp}/log/slurmd.log
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""

def _free_port_pair() -> int:
    "A port p with p and p + 1 both free on this machine (slurmctld's and slurmd's)."
    for _ in range(100):
        with socket.socket() as a:
            a.bind(('127.0.0.1', 0)); p = a.getsockname()[1]
            with socket.socket() as b:
                try: b.bind(('127.0.0.1', p + 1)); return p
                except OSError: continue
    raise RuntimeError('no two consecutive free ports for SLURM')

def _kill_pidfile(f: Path):
    try: pid = int(f.read_text().split()[0])
    except (OSError, ValueError, IndexError): return
    with contextlib.suppress(ProcessLookupError): os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        try: os.kill(pid, 0)
        except ProcessLookupError: return
        time.sleep(0.1)

@contextlib.contextmanager
def slurm_cluster():
    "Start a one-node SLURM cluster; yields the temp folder. Skips (fails in CI) without SLURM or root."
    missing = [d for d in DAEMONS if not Path(d).exists()] + [c for c in ('sbatch', 'squeue', 'scancel', 'sinfo') if not shutil.which(c)]
    if missing: skip_or_fail(f'SLURM not installed ({", ".join(missing)} missing): {INSTALL_HINT}')
    if os.geteuid() != 0: skip_or_fail('the SLURM test cluster runs its daemons as root: run the tests as root')
    try: import submitit  # noqa: F401
    except ImportError: skip_or_fail('submitit is not installed: pip install submitit')
    tmp = Path(tempfile.mkdtemp(prefix='metanb-slurm-'))
    for d in ('state', 'spool', 'run', 'log', 'munge', 'bin'): (tmp/d).mkdir()
    host = socket.gethostname().split('.')[0]
    mem = int(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**20 * 0.8)
    # one cluster per test session (each pytest-xdist worker, each concurrent pytest): its own free ports, state and munge socket
    port = _free_port_pair()
    (tmp/'slurm.conf').write_text(_conf(tmp, host, os.cpu_count() or 1, mem, port))
    (tmp/'bin'/'sacct').write_text(SACCT); (tmp/'bin'/'sacct').chmod(0o755)
    old = {k: os.environ.get(k) for k in ('SLURM_CONF', 'PATH')}
    os.environ['SLURM_CONF'] = str(tmp/'slurm.conf'); os.environ['PATH'] = f"{tmp/'bin'}:{os.environ['PATH']}"
    munge_sock, munge_pid = tmp/'munge'/'munge.socket.2', tmp/'munge'/'munged.pid'
    shutil.chown(tmp/'munge', 'munge', 'munge'); (tmp/'munge').chmod(0o755); tmp.chmod(0o755)
    try:
        subprocess.run(['runuser', '-u', 'munge', '--', '/usr/sbin/munged', '--socket', str(munge_sock), '--pid-file', str(munge_pid),
                        '--log-file', str(tmp/'munge'/'munged.log'), '--seed-file', str(tmp/'munge'/'munged.seed')], check=True, timeout=30)
        subprocess.run(['/usr/sbin/slurmctld'], check=True, timeout=30)
        subprocess.run(['/usr/sbin/slurmd'], check=True, timeout=30)
        for _ in range(300):
            r = subprocess.run(['sinfo', '-h', '-o', '%t'], capture_output=True, text=True)
            if r.stdout.strip() == 'idle': break
            time.sleep(0.1)
        else: pytest.fail(f"SLURM node not idle after 30 s (sinfo: {r.stdout.strip()} {r.stderr.strip()}); logs in {tmp/'log'}")
        yield tmp
    finally:
        subprocess.run(['scancel', '--full', '-u', 'root'], capture_output=True)
        time.sleep(0.5)
        for f in ('slurmd.pid', 'slurmctld.pid'): _kill_pidfile(tmp/'run'/f)
        _kill_pidfile(munge_pid)
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)
