"""Several coordinators on one etcd: the core runs only in the leader.

`HaCoordinator` ties a `LeaderElection` to the etcd store and to a `CoordinatorCore` factory:
- on election, it attaches the term to the store (every write is fenced by it) and builds a fresh
  core, which loads every job from the store: the new leader continues from the stored state (jobs,
  nodes, incarnations, decisions; a recovery that was in flight is decided again and, being fenced by
  the incarnation, carried out once);
- on deposition (lease lost, etcd unreachable past the lease), it drops the core at once: a standby
  or cut-off coordinator acts on nothing;
- `status_view()` serves read-only admin calls on standbys from the store;
- `leader()` names the leader and its address so that the transport can redirect agents.
The gRPC server calls `core()` per request and `tick()` from its tick thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kedge.coordinator.core import CoordinatorCore, JobStatus
from kedge.coordinator.errors import StoreError
from kedge.coordinator.etcd_store import EtcdStore
from kedge.coordinator.leader import LeaderElection, LeaderInfo, Leadership
from kedge.coordinator.model import CommandData
from kedge.coordinator.store import Store

__all__ = ["HaCoordinator"]

log = logging.getLogger(__name__)

CoreFactory = Callable[[Store], CoordinatorCore]


class _NoCommands:
    """Sink of the throwaway read-only core of a standby: it must never command anything."""

    def send(self, node_id: str, command: CommandData) -> None:
        raise RuntimeError("a standby coordinator does not send commands")


class HaCoordinator:
    """Leads or stands by (see the module docstring); `stop()` resigns so a standby takes over."""

    def __init__(
        self,
        store: EtcdStore,
        make_core: CoreFactory,
        *,
        candidate_id: str,
        address: str = "",
        config: LeaderElection.Config | None = None,
    ) -> None:
        self.store = store
        self._make_core = make_core
        self._core: CoordinatorCore | None = None
        self._lock = threading.Lock()
        self.election = LeaderElection(
            store.client,
            store.leader_key,
            candidate_id=candidate_id,
            address=address,
            config=config,
            on_change=self._on_change,
        )
        store.attach_leadership(self.election.current)

    def start(self) -> None:
        self.election.start()

    def stop(self, *, resign: bool = True) -> None:
        self.election.stop(resign=resign)

    def core(self) -> CoordinatorCore | None:
        """The live core while this process leads, else None (the caller redirects)."""
        with self._lock:
            return self._core if self.election.is_leader() else None

    def leader(self) -> LeaderInfo | None:
        return self.election.leader()

    def tick(self) -> None:
        """The leader's periodic work; a write refused for lost leadership or etcd stops this tick."""
        core = self.core()
        if core is None:
            return
        try:
            core.tick()
        except StoreError as error:
            log.warning("ha_tick_refused id=%s error=%r", self.election.candidate_id, str(error))

    def status_view(self, job_id: str = "", recent: int = 10) -> list[JobStatus]:
        """`kedge status` on any coordinator: the leader's live view, else a read of the store."""
        core = self.core()
        if core is not None:
            return core.status(job_id, recent)
        return CoordinatorCore(self.store, _NoCommands()).status(job_id, recent)

    def _on_change(self, term: Leadership | None) -> None:
        with self._lock:
            self._core = None
        if term is None:
            log.warning("ha_standby id=%s: core dropped", self.election.candidate_id)
            return
        core = self._make_core(self.store)  # loads every job from the store
        with self._lock:
            self._core = core
        log.warning(
            "ha_leading id=%s revision=%d jobs=%d", term.candidate_id, term.revision, len(core.status())
        )
