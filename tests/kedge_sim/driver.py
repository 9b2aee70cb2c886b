"""One simulated scenario end to end: a cluster, one injected fault (or none), the coordinator under
test, and the measurements (messages, coordinator CPU, diagnosis latency and accuracy, false actions).

Time. The clock is virtual. The coordinator is modelled as one single-core server: every call is
timed with the thread's CPU clock and, when `charge_cpu` is on, occupies the server for that long in
virtual time, so a call that arrives while it is busy waits (FIFO) and the coordinator sees the later
`now`. A coordinator slower than real time therefore falls behind visibly (`max_lag_s` grows) and its
diagnosis latency includes the queueing. With `charge_cpu` off the run is exactly replayable from
its seed (the fast test uses that).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from kedge_sim.adapter import CoordinatorAdapter, Decision, ProbeRequest
from kedge_sim.clock import VirtualClock
from kedge_sim.cluster import Cluster, node_id
from kedge_sim.faults import Fault, FaultKind, draw_fault
from kedge_sim.workload import WorkloadConfig

T = TypeVar("T")
RECOVERY_ACTIONS = frozenset({"restart", "shrink", "replace", "stop"})


@dataclass(kw_only=True, slots=True)
class Scenario:
    """One run: cluster size, seed, the fault to inject and the agents' rhythm."""

    gpus: int
    """Simulated GPUs (one rank each)."""
    seed: int
    """Seed of every random draw of the run."""
    fault: FaultKind | None = None
    """Fault to inject, or None for a no-fault soak."""
    fault_at_s: float = 50.0
    """Virtual time of the fault (after warm-up: the coordinator learns the job's rhythm)."""
    after_fault_s: float = 150.0
    """How long to wait for the coordinator's action after the fault."""
    soak_s: float = 200.0
    """Length of a no-fault run."""
    gpus_per_node: int = 8
    report_interval_s: float = 1.0
    """Agents' periodic summary interval."""
    heartbeat_interval_s: float = 1.0
    """Agents' lease renewal interval."""
    tick_interval_s: float = 0.25
    """Coordinator's diagnosis/policy period (the core's default tick)."""
    job_start_s: float = 3.0
    """When the workers start training (after registration and the start command)."""
    agent_poll_s: float = 0.5
    """Agents notice a process exit or an XID within this (then report at once)."""
    probe_s: float = 2.0
    """Time an agent needs to run the pairwise probe."""
    stop_s: float = 1.0
    """Time an agent needs to stop its workers (abort, SIGTERM) and confirm."""
    start_s: float = 2.0
    """Time an agent needs to launch its workers and confirm."""
    charge_cpu: bool = True
    """Queue coordinator calls behind its measured CPU time (see module docstring)."""
    stop_at_first_recovery: bool = True
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)


@dataclass(kw_only=True, slots=True)
class Result:
    """Measurements of one scenario."""

    scenario: Scenario
    fault: Fault | None
    decisions: list[Decision]
    messages: Counter[str]
    coord_cpu_s: float
    virtual_s: float
    wall_s: float
    max_lag_s: float
    first_verdict_s: float | None = None
    recovered_s: float | None = None  # decision -> job RUNNING again (control plane; CoreAdapter)

    @property
    def first_action(self) -> Decision | None:
        """The first action naming a culprit node, else the first action at all."""
        acts = [d for d in self.decisions if d.action != "none"]
        return next((d for d in acts if d.culprit_nodes or d.nodes), acts[0] if acts else None)

    @property
    def latency_s(self) -> float | None:
        """Fault -> first action (alert or recovery) naming a culprit node (else the first action)."""
        act = self.first_action
        if self.fault is None or act is None:
            return None
        return act.at_s - self.fault.at_s

    @property
    def correct(self) -> bool | None:
        """The first action names the faulty node and only it (None without a fault)."""
        act = self.first_action
        if self.fault is None:
            return None
        if act is None:
            return False
        named = set(act.culprit_nodes) | set(act.nodes)
        return named == {node_id(self.fault.node)}

    @property
    def false_actions(self) -> int:
        """Actions before the fault, or naming a node the fault did not touch."""
        bad = 0
        for d in self.decisions:
            if d.action == "none":
                continue
            early = self.fault is None or d.at_s < self.fault.at_s
            wrong = self.fault is not None and bool(set(d.culprit_nodes) - {node_id(self.fault.node)})
            bad += int(early or wrong)
        return bad


class _Server:
    """Single-core FIFO model of the coordinator: times each call, queues behind the last one."""

    def __init__(self, charge_cpu: bool) -> None:
        self.charge_cpu = charge_cpu
        self.busy_until_s = 0.0
        self.cpu_s = 0.0
        self.max_lag_s = 0.0

    def call(self, now_s: float, fn: Callable[[float], T]) -> tuple[float, T]:
        start_s = max(now_s, self.busy_until_s) if self.charge_cpu else now_s
        self.max_lag_s = max(self.max_lag_s, start_s - now_s)
        t0 = time.thread_time()
        out = fn(start_s)
        cpu = time.thread_time() - t0
        self.cpu_s += cpu
        end_s = start_s + (cpu if self.charge_cpu else 0.0)
        self.busy_until_s = end_s
        return end_s, out


class Run:
    """Wires a cluster, the clock and an adapter for one scenario."""

    def __init__(self, scenario: Scenario, adapter: CoordinatorAdapter, *, announce: bool = True) -> None:
        s = scenario
        self.s = s
        self.adapter = adapter
        self.clock = VirtualClock(s.seed, announce=announce)
        self.nodes = s.gpus // s.gpus_per_node
        self.cluster = Cluster(
            nodes=self.nodes,
            gpus_per_node=s.gpus_per_node,
            workload=s.workload,
            rng=self.clock.rng,
            start_s=s.job_start_s,
        )
        self.server = _Server(s.charge_cpu)
        self.messages: Counter[str] = Counter()
        self.decisions: list[Decision] = []
        self.fault: Fault | None = None
        self.done = False
        self.recovered_s: float | None = None

    def run(self) -> Result:
        wall0 = time.perf_counter()
        s = self.s
        ids = [node_id(n) for n in range(self.nodes)]
        self.server.call(0.0, lambda now: self.adapter.register(now, ids, s.gpus_per_node))
        self.messages["register"] += self.nodes
        rng = self.clock.rng
        for n in range(self.nodes):
            self.clock.every(
                s.report_interval_s, self._reporter(n), phase_s=float(rng.uniform(0, s.report_interval_s))
            )
        self.clock.every(s.tick_interval_s, self._tick, phase_s=s.tick_interval_s)
        end_s = s.soak_s
        if s.fault is not None:
            self.fault = draw_fault(rng, s.fault, s.fault_at_s, self.nodes, s.gpus_per_node)
            self.clock.at(s.fault_at_s, self._inject)
            end_s = s.fault_at_s + s.after_fault_s
        self.clock.run_until(end_s, stop=lambda: self.done)
        return Result(
            scenario=s,
            fault=self.fault,
            decisions=self.decisions,
            messages=self.messages,
            coord_cpu_s=self.server.cpu_s,
            virtual_s=self.clock.now_s,
            wall_s=time.perf_counter() - wall0,
            max_lag_s=self.server.max_lag_s,
            recovered_s=self.recovered_s,
        )

    def _reporter(self, node: int) -> Callable[[float], None]:
        hb_every = max(1, round(self.s.heartbeat_interval_s / self.s.report_interval_s))
        count = [0]
        nid = node_id(node)

        def report(now_s: float) -> None:
            if self.cluster.node_lost[node]:
                return
            count[0] += 1
            if count[0] % hb_every == 0:
                self.server.call(now_s, lambda t: self.adapter.heartbeat(t, nid))
                self.messages["heartbeat"] += 1
            self._send(node, now_s)

        return report

    def _send(self, node: int, now_s: float) -> None:
        sample = self.cluster.sample(node, now_s)
        self.server.call(now_s, lambda t: self.adapter.report(t, sample))
        self.messages["report"] += 1

    def _inject(self, now_s: float) -> None:
        assert self.fault is not None
        self.cluster.inject(self.fault)
        node = self.fault.node
        if self.cluster.has_urgent(node):  # the agent notices at its next poll and reports at once
            delay = float(self.clock.rng.uniform(0, self.s.agent_poll_s))
            self.clock.after(
                delay, lambda t: self._send(node, t) if not self.cluster.node_lost[node] else None
            )

    def _tick(self, now_s: float) -> None:
        end_s, decisions = self.server.call(now_s, self.adapter.tick)
        self.messages["tick"] += 1
        for d in decisions:
            d.at_s = end_s
            self.decisions.append(d)
            if d.action in RECOVERY_ACTIONS and self.s.stop_at_first_recovery and not self._commands:
                self.done = True
        if self._commands:
            self._pump(end_s)
            self._check_recovered()
        for req in self.adapter.probe_requests():
            self.clock.after(self.s.probe_s, lambda t, r=req: self._answer_probe(t, r))

    @property
    def _commands(self) -> bool:
        return hasattr(self.adapter, "commands")

    def _check_recovered(self) -> None:
        running = getattr(self.adapter, "running_at_s", [])
        first = next((d for d in self.decisions if d.action in RECOVERY_ACTIONS), None)
        if first is None or not running or running[-1][1] <= 1:
            return
        if running[-1][0] >= first.at_s:
            self.recovered_s = running[-1][0] - first.at_s
            if self.s.stop_at_first_recovery:
                self.done = True

    def _pump(self, now_s: float) -> None:
        """Schedules the simulated agents' answers to the commands the coordinator queued."""
        from kedge_sim.core_adapter import is_probe  # only the core adapter sends commands

        adapter = self.adapter
        for cmd in adapter.commands():  # type: ignore[attr-defined]
            self.messages["command"] += 1
            node = _index(cmd.node_id)
            body = cmd.command.body
            kind = type(body).__name__
            delay = (
                self.s.probe_s
                if is_probe(cmd.command)
                else self.s.start_s
                if "Start" in kind
                else self.s.stop_s
            )
            self.clock.at(now_s + delay, lambda t, c=cmd, n=node: self._answer(t, c, n))

    def _answer(self, now_s: float, cmd: object, node: int) -> None:
        from kedge_sim.core_adapter import AgentCommand, is_probe

        assert isinstance(cmd, AgentCommand)
        if self.cluster.node_lost[node]:
            return
        adapter = self.adapter
        if is_probe(cmd.command):
            peers = cmd.command.body.peers  # type: ignore[union-attr]
            matrix = probe_matrix(peers, self.cluster, self.fault, self.clock.rng)
            self.server.call(
                now_s, lambda t: adapter.probe_answer(t, cmd.node_id, cmd.command, peers, matrix)
            )  # type: ignore[attr-defined]
            self.messages["probe_result"] += 1
        end_s, _ = self.server.call(now_s, lambda t: adapter.command_done(t, cmd.node_id, cmd.command))  # type: ignore[attr-defined]
        self.messages["command_done"] += 1
        self._pump(end_s)
        self._check_recovered()

    def _answer_probe(self, now_s: float, req: ProbeRequest) -> None:
        matrix = probe_matrix(req.peers, self.cluster, self.fault, self.clock.rng)
        reporter = next((p for p in req.peers if not self.cluster.node_lost[_index(p)]), req.peers[0])
        self.server.call(now_s, lambda t: self.adapter.probe_result(t, reporter, req, matrix))
        self.messages["probe_result"] += 1


def _index(nid: str) -> int:
    return int(nid.rsplit("-", 1)[1])


def probe_matrix(
    peers: list[str], cluster: Cluster, fault: Fault | None, rng: np.random.Generator
) -> list[float]:
    """Ring-shift send/recv delays between `peers` from the ground truth: a degraded NIC makes its
    node's row and column slow, a dead link or node makes them time out; plus 5% noise."""
    n = len(peers)
    base_s = 0.010
    delay = base_s * rng.lognormal(0.0, 0.05, size=(n, n))
    if fault is not None and fault.kind in (FaultKind.COMM_SLOW, FaultKind.COMM_HANG, FaultKind.NODE_LOSS):
        bad = node_id(fault.node)
        if bad in peers:
            i = peers.index(bad)
            factor = fault.slow_factor if fault.kind is FaultKind.COMM_SLOW else 100.0
            delay[i, :] *= factor
            delay[:, i] *= factor
    np.fill_diagonal(delay, 0.0)
    return [float(x) for x in delay.ravel()]
