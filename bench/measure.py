"""Timing, CPU and memory of one process, read from ``/proc`` (Linux).

* CPU of a process: utime + stime of ``/proc/PID/stat`` (that process only; its waited-for
  children's time is in cutime/cstime, which are not counted), read before and after;
* CPU of the machine: the non-idle jiffies of ``/proc/stat`` (client, server and git together);
* memory: VmRSS of ``/proc/PID/status`` sampled by a thread every 20 ms, and VmHWM;
* CPU of a process tree (a server and the git it runs): every live process's utime + stime +
  cutime + cstime, summed over the tree (:func:`tree_cpu_seconds`); a child that exited and was
  reaped is in its parent's cutime/cstime, a live one in its own fields, so the sum counts
  each CPU second once and only grows. :class:`TreeSampler` also keeps each process's own
  time by name, to split a gateway's CPU from the git it runs.
"""

from __future__ import annotations

import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.common import Env

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM etc. of ``pid`` in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("Vm"):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    return proc_status(pid)[key] / 1024


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` itself (fields 14 and 15 of ``/proc/PID/stat``), in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_user_seconds(pid: int) -> float:
    """utime of ``pid`` alone: the process's own (Python) work, without the kernel's."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / _CLK_TCK


@dataclass
class ProcStat:
    """One ``/proc/PID/stat`` reading (times in seconds)."""

    pid: int
    comm: str
    ppid: int
    start: int  #: starttime in ticks since boot: (pid, start) names one process
    utime: float
    stime: float
    cutime: float
    cstime: float

    @property
    def own(self) -> float:
        return self.utime + self.stime

    @property
    def total(self) -> float:
        """Its own time plus its reaped children's."""
        return self.utime + self.stime + self.cutime + self.cstime


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
    except OSError:
        return None
    head, rest = data.rsplit(")", 1)
    comm = head.split("(", 1)[1]
    f = rest.split()  # f[0] is field 3 (state)
    t = _CLK_TCK
    return ProcStat(
        pid, comm, int(f[1]), int(f[19]),
        int(f[11]) / t, int(f[12]) / t, int(f[13]) / t, int(f[14]) / t,
    )  # fmt: skip


def process_tree(roots: list[int]) -> list[ProcStat]:
    """``roots`` and all their live descendants (one scan of ``/proc``)."""
    stats: dict[int, ProcStat] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_stat(int(name))
            if st is not None:
                stats[st.pid] = st
    kids: dict[int, list[int]] = {}
    for st in stats.values():
        kids.setdefault(st.ppid, []).append(st.pid)
    out: list[ProcStat] = []
    todo = [r for r in roots if r in stats]
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        out.append(stats[pid])
        todo.extend(kids.get(pid, ()))
    return out


def tree_cpu_seconds(roots: list[int]) -> float:
    """CPU seconds of ``roots`` and everything they ran: live processes' utime+stime+cutime+cstime."""
    return sum(st.total for st in process_tree(roots))


def wait_tree_quiet(roots: list[int], keep: int, timeout: float = 10.0) -> int:
    """Wait until at most ``keep`` processes are left in the tree (children reaped); the count."""
    deadline = time.monotonic() + timeout
    while True:
        n = len(process_tree(roots))
        if n <= keep or time.monotonic() > deadline:
            return n
        time.sleep(0.02)


class TreeSampler(threading.Thread):
    """Samples a process tree every ``interval`` s: each process's last ``ProcStat`` by (pid, start).

    After its ``with`` block, :meth:`own_by` adds up the own CPU (utime+stime) of the processes
    that match a predicate: the processes alive at the start count from their first
    reading, the others from zero; a process's CPU after its last reading is lost (at most
    one interval of it).
    """

    def __init__(self, roots: list[int], interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.roots, self.interval = roots, interval
        self.first: dict[tuple[int, int], ProcStat] = {}
        self.last: dict[tuple[int, int], ProcStat] = {}
        self.samples = 0
        self._halt = threading.Event()
        self._sample()  # the processes alive at the start, before anything happens
        self.initial = set(self.first)

    def _sample(self) -> None:
        for st in process_tree(self.roots):
            key = (st.pid, st.start)
            self.first.setdefault(key, st)
            self.last[key] = st
        self.samples += 1

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self._sample()

    def __enter__(self) -> TreeSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self.join()
        self._sample()

    def own_by(self, pred: Callable[[ProcStat], bool]) -> float:
        """Own CPU seconds (utime+stime) spent during the sampling by the processes ``pred`` picks."""
        total = 0.0
        for key, last in self.last.items():
            if pred(last):
                total += last.own - (self.first[key].own if key in self.initial else 0.0)
        return total


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent not idle (``/proc/stat``): client, server and git together."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _CLK_TCK


class RSSSampler(threading.Thread):
    """Max VmRSS (MiB) of one pid (that process only, not its children), every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.max_kib = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                rss = proc_status(self.pid).get("VmRSS", 0)
            except (OSError, ValueError):
                break
            self.max_kib = max(self.max_kib, rss)
            self.samples += 1
            self._halt.wait(self.interval)

    def __enter__(self) -> RSSSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self.join()

    @property
    def max_mib(self) -> float:
        return self.max_kib / 1024


@dataclass
class CloneCase:
    """One way of cloning (a transport and a protocol version) and what its clones measured."""

    name: str
    url: str
    protocol: int
    extra: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    server_pid: int | None = None
    server_cpu: list[float] = field(default_factory=list)  #: per clone, the server process only
    server_user: list[float] = field(default_factory=list)  #: its utime alone, per clone
    server_peak_rss: float = 0.0
    machine_cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def server_cpu_per_clone(self) -> float:
        """Server CPU over all timed clones divided by their count."""
        return sum(self.server_cpu) / len(self.server_cpu)


def timed_clone(env: Env, case: CloneCase, dest: str, expect_head: str) -> float:
    """One ``git clone --bare`` of ``case`` into ``dest``: wall time; CPU and RSS go into ``case``."""
    shutil.rmtree(dest, ignore_errors=True)
    argv = ["-c", f"protocol.version={case.protocol}", "clone", "--bare", "-q", *case.extra, case.url, dest]
    pid = case.server_pid
    sampler = RSSSampler(pid) if pid else None
    cpu0 = proc_cpu_seconds(pid) if pid else 0.0
    user0 = proc_user_seconds(pid) if pid else 0.0
    if sampler:
        sampler.start()
    try:
        busy0 = machine_busy_seconds()
        t = time.perf_counter()
        env.git(*argv, capture=False)
        elapsed = time.perf_counter() - t
        case.machine_cpu.append(machine_busy_seconds() - busy0)
    finally:
        if sampler:
            sampler.__exit__()
    if pid and sampler:
        case.server_cpu.append(proc_cpu_seconds(pid) - cpu0)
        case.server_user.append(proc_user_seconds(pid) - user0)
        case.server_peak_rss = max(case.server_peak_rss, sampler.max_mib)
    head = env.out("--git-dir", dest, "rev-parse", "refs/heads/main")
    if head != expect_head:
        raise RuntimeError(f"{case.name}: cloned main is {head}, expected {expect_head}")
    shutil.rmtree(dest, ignore_errors=True)
    return elapsed
