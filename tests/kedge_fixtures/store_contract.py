"""The coordinator store's backend contract, written once and run against every backend.

Use: subclass `StoreContract` in a test module and provide a `store_factory` fixture returning a
callable that opens the backend on the SAME backing state each time it is called (a file path, an
etcd key prefix), so the restart tests can close one store and open another on the same data:

    class TestSqliteStore(StoreContract):
        @pytest.fixture
        def store_factory(self, tmp_path):
            return lambda: SqliteStore(tmp_path / "s.db")

Stores opened through the factory are closed by the `store` fixture's teardown; tests that open more
call `.close()` themselves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from kedge.coordinator.errors import NotFound, StaleIncarnation
from kedge.coordinator.model import (
    ActionKind,
    ActionRecord,
    Assignment,
    JobState,
    NodeRecord,
    NodeState,
    Verdict,
    VerdictKind,
)
from kedge.coordinator.store import RETAINED_RECORDS, Store

StoreFactory = Callable[[], Store]


def _node(job: str, node_id: str, **kw: object) -> NodeRecord:
    return NodeRecord(job_id=job, node_id=node_id, hostname="h-" + node_id, nproc=2, **kw)  # type: ignore[arg-type]


def _assign(*nodes: str, per_node: int = 2) -> list[Assignment]:
    out = []
    for i, node in enumerate(nodes):
        out += [Assignment(rank=i * per_node + lr, node_id=node, local_rank=lr) for lr in range(per_node)]
    return out


class StoreContract:
    """Backend-independent behaviour of `kedge.coordinator.store.Store`."""

    @pytest.fixture
    def store(self, store_factory: StoreFactory) -> Iterator[Store]:
        s = store_factory()
        yield s
        s.close()

    def test_is_a_store(self, store: Store) -> None:
        assert isinstance(store, Store)

    def test_ensure_job_creates_once_and_keeps_command(self, store: Store) -> None:
        job = store.ensure_job("j", command=["python", "train.py"], now_wall_ns=5)
        assert (job.job_id, job.state, job.incarnation, job.step) == ("j", JobState.PENDING, 0, -1)
        again = store.ensure_job("j", command=["other"], now_wall_ns=9)
        assert again.command == ["python", "train.py"] and again.created_wall_ns == 5
        assert store.get_job("missing") is None
        store.ensure_job("a", command=[], now_wall_ns=1)
        assert [j.job_id for j in store.list_jobs()] == ["a", "j"]

    def test_begin_incarnation_is_compare_and_set(self, store: Store) -> None:
        store.ensure_job("j", command=[], now_wall_ns=0)
        inc = store.begin_incarnation(
            "j",
            expected_incarnation=0,
            assignments=_assign("n1", "n2"),
            state=JobState.RUNNING,
            count_restart=False,
        )
        assert inc == 1
        with pytest.raises(StaleIncarnation) as err:
            store.begin_incarnation(
                "j",
                expected_incarnation=0,
                assignments=_assign("n1"),
                state=JobState.RUNNING,
                count_restart=True,
            )
        assert (err.value.given, err.value.current) == (0, 1)
        job = store.get_job("j")
        assert job is not None
        assert (job.incarnation, job.world_size, job.state, job.restarts) == (1, 4, JobState.RUNNING, 0)
        assert store.assignments("j", 1) == _assign("n1", "n2")
        assert store.assignments("j", 2) == []

    def test_restart_counter_and_old_assignments_kept(self, store: Store) -> None:
        store.ensure_job("j", command=[], now_wall_ns=0)
        store.begin_incarnation(
            "j",
            expected_incarnation=0,
            assignments=_assign("n1", "n2"),
            state=JobState.RUNNING,
            count_restart=False,
        )
        store.begin_incarnation(
            "j",
            expected_incarnation=1,
            assignments=_assign("n2"),
            state=JobState.RECOVERING,
            count_restart=True,
        )
        job = store.get_job("j")
        assert job is not None and (job.incarnation, job.world_size, job.restarts) == (2, 2, 1)
        assert store.assignments("j", 1) == _assign("n1", "n2")
        assert store.assignments("j", 2) == _assign("n2")

    def test_bad_assignments_rejected_without_write(self, store: Store) -> None:
        store.ensure_job("j", command=[], now_wall_ns=0)
        bad = [Assignment(rank=0, node_id="n", local_rank=0), Assignment(rank=2, node_id="n", local_rank=1)]
        with pytest.raises(ValueError):
            store.begin_incarnation(
                "j", expected_incarnation=0, assignments=bad, state=JobState.RUNNING, count_restart=False
            )
        job = store.get_job("j")
        assert job is not None and job.incarnation == 0

    def test_every_mutation_is_fenced(self, store: Store) -> None:
        store.ensure_job("j", command=[], now_wall_ns=0)
        store.upsert_node(_node("j", "n1"), incarnation=0)
        store.begin_incarnation(
            "j",
            expected_incarnation=0,
            assignments=_assign("n1"),
            state=JobState.RUNNING,
            count_restart=False,
        )
        v = Verdict(kind=VerdictKind.RANK_DIED, rank=0, node_id="n1", reason="x")
        a = ActionRecord(kind=ActionKind.RESTART, reason="r", wall_time_ns=1, incarnation=0)
        stale_calls: list[Callable[[], object]] = [
            lambda: store.set_job_state("j", JobState.STOPPED, incarnation=0),
            lambda: store.set_job_step("j", 99, incarnation=0),
            lambda: store.upsert_node(_node("j", "n9"), incarnation=0),
            lambda: store.set_node_state("j", "n1", NodeState.LOST, incarnation=0),
            lambda: store.renew_leases("j", {"n1": 123}, incarnation=0),
            lambda: store.append_diagnoses("j", [v], incarnation=0),
            lambda: store.append_action("j", a, incarnation=0),
        ]
        for call in stale_calls:
            with pytest.raises(StaleIncarnation):
                call()
        job = store.get_job("j")
        assert job is not None and (job.state, job.step) == (JobState.RUNNING, -1)
        assert [(n.node_id, n.state, n.lease_expires_wall_ns) for n in store.list_nodes("j")] == [
            ("n1", NodeState.ALIVE, 0)
        ]
        assert store.recent_diagnoses("j", 10) == [] and store.recent_actions("j", 10) == []

    def test_fenced_writes_on_unknown_job_raise_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound):
            store.set_job_state("nope", JobState.RUNNING, incarnation=0)
        store.ensure_job("j", command=[], now_wall_ns=0)
        with pytest.raises(NotFound):
            store.set_node_state("j", "ghost", NodeState.LOST, incarnation=0)

    def test_nodes_upsert_state_and_leases(self, store: Store) -> None:
        store.ensure_job("j", command=[], now_wall_ns=0)
        store.upsert_node(_node("j", "n2", address="10.0.0.2"), incarnation=0)
        store.upsert_node(_node("j", "n1", state=NodeState.SPARE), incarnation=0)
        store.set_node_state("j", "n2", NodeState.ISOLATED, incarnation=0)
        store.renew_leases("j", {"n1": 111, "n2": 222, "ghost": 5}, incarnation=0)
        nodes = store.list_nodes("j")
        assert [(n.node_id, n.state, n.lease_expires_wall_ns) for n in nodes] == [
            ("n1", NodeState.SPARE, 111),
            ("n2", NodeState.ISOLATED, 222),
        ]
        assert nodes[1].address == "10.0.0.2" and nodes[1].hostname == "h-n2" and nodes[1].nproc == 2
        store.upsert_node(_node("j", "n2", address="10.0.0.9"), incarnation=0)
        assert store.list_nodes("j")[1].address == "10.0.0.9"

    def test_diagnoses_and_actions_newest_first_with_evidence(self, store: Store) -> None:
        store.ensure_job("j", command=[], now_wall_ns=0)
        verdicts = [
            Verdict(
                kind=VerdictKind.HANG_NON_COMM, rank=r, node_id="n1", reason=f"r{r}", evidence={"seq": str(r)}
            )
            for r in range(3)
        ]
        store.append_diagnoses("j", verdicts, incarnation=0)
        got = store.recent_diagnoses("j", 2)
        assert [v.rank for v in got] == [2, 1] and got[0].evidence == {"seq": "2"}
        action = ActionRecord(
            kind=ActionKind.SHRINK,
            reason="node n1 lost",
            wall_time_ns=7,
            incarnation=0,
            evidence=verdicts[:1],
            nodes=["n1"],
        )
        store.append_action("j", action, incarnation=0)
        assert store.recent_actions("j", 5) == [action]
        assert store.recent_actions("other", 5) == []

    def test_history_is_bounded(self, store: Store) -> None:
        store.ensure_job("j", command=[], now_wall_ns=0)
        batch = [Verdict(kind=VerdictKind.STRAGGLER, rank=i) for i in range(RETAINED_RECORDS + 50)]
        store.append_diagnoses("j", batch, incarnation=0)
        got = store.recent_diagnoses("j", RETAINED_RECORDS * 2)
        assert len(got) == RETAINED_RECORDS and got[0].rank == RETAINED_RECORDS + 49

    def test_state_survives_reopen(self, store_factory: StoreFactory) -> None:
        first = store_factory()
        first.ensure_job("j", command=["t"], now_wall_ns=3)
        first.upsert_node(_node("j", "n1"), incarnation=0)
        first.begin_incarnation(
            "j", expected_incarnation=0, assignments=_assign("n1"), state=JobState.RUNNING, count_restart=True
        )
        first.set_job_step("j", 42, incarnation=1)
        first.append_action(
            "j",
            ActionRecord(kind=ActionKind.RESTART, reason="r", wall_time_ns=1, incarnation=1),
            incarnation=1,
        )
        first.close()
        second = store_factory()
        try:
            job = second.get_job("j")
            assert job is not None and (job.incarnation, job.step, job.restarts, job.command) == (
                1,
                42,
                1,
                ["t"],
            )
            assert second.assignments("j", 1) == _assign("n1")
            assert [n.node_id for n in second.list_nodes("j")] == ["n1"]
            assert second.recent_actions("j", 1)[0].reason == "r"
        finally:
            second.close()

    def test_concurrent_compare_and_set_has_one_winner(self, store: Store) -> None:
        store.ensure_job("j", command=[], now_wall_ns=0)
        wins: list[int] = []
        losses: list[int] = []

        def contender() -> None:
            try:
                wins.append(
                    store.begin_incarnation(
                        "j",
                        expected_incarnation=0,
                        assignments=_assign("n1"),
                        state=JobState.RUNNING,
                        count_restart=True,
                    )
                )
            except StaleIncarnation:
                losses.append(1)

        threads = [threading.Thread(target=contender) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert wins == [1] and len(losses) == 7
        job = store.get_job("j")
        assert job is not None and job.restarts == 1
