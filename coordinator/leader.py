"""Leader election among coordinators by an etcd lease.

Protocol (one term of leadership):
1. A candidate that sees no leader key grants a lease of `ttl_s` and runs one transaction:
   `if create_revision(key) == 0: put(key, me, lease)`. Exactly one candidate wins; the key's
   create revision names the term.
2. The leader refreshes its lease every `ttl_s / 3`. It counts itself leader only until
   `last refresh sent + ttl_s - safety_s` by its own monotonic clock, so a leader cut off from etcd
   (or paused, or slow) stops acting *before* etcd expires its key and a standby takes over.
3. Standbys watch the key (bounded waits, re-read after each) and campaign as soon as it is deleted:
   by lease expiry (the leader died) or revocation (it resigned).
4. Fencing: every store write of the leader carries `Leadership.fence()`, a compare of the key's
   create revision with the term's. After a takeover the key has a new create revision, so a late
   write of a deposed leader (paused, partitioned) fails inside etcd, whatever the old leader believes.

Takeover after a leader dies: at most `ttl_s` until etcd expires the lease (etcd checks expiry about
twice a second) plus one watch event and one transaction; with the default `ttl_s = 3` under 5 s.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kedge.coordinator.etcd_client import Compare, EtcdClient, EtcdError, Get, Put

__all__ = ["LeaderElection", "LeaderInfo", "Leadership"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Leadership:
    """One term of leadership held by this process; `fence()` guards every write of the term."""

    key: str
    candidate_id: str
    lease_id: int
    revision: int

    def fence(self) -> Compare:
        return Compare(self.key, "create", "==", self.revision)


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    """Who leads now, as read from etcd (for standbys to redirect or proxy to)."""

    candidate_id: str
    address: str
    revision: int


class LeaderElection:
    """Campaigns for `key` in a background thread; `current()` says whether this process leads now."""

    @dataclass(kw_only=True, slots=True)
    class Config:
        """Election timing. Precedence: argument > env KEDGE_LEADER_* (read by the CLI) > default."""

        ttl_s: int = 3
        """Lease time to live: a dead leader's key expires after this, bounding the takeover time."""
        safety_s: float = 0.5
        """The leader stops acting this long before its lease could expire (clock-rate slack)."""
        watch_s: float = 1.0
        """Longest single wait of a standby on the leader key before it reads the key again."""

    def __init__(
        self,
        client: EtcdClient,
        key: str,
        *,
        candidate_id: str,
        address: str = "",
        config: Config | None = None,
        on_change: Callable[[Leadership | None], None] | None = None,
    ) -> None:
        self.config = config or LeaderElection.Config()
        if self.config.ttl_s < 2:
            raise ValueError("ttl_s must be >= 2: etcd refuses shorter leases")
        self._client = client
        self.key = key
        self.candidate_id = candidate_id
        self._value = json.dumps({"id": candidate_id, "address": address}).encode()
        self._on_change = on_change
        self._term: Leadership | None = None
        self._valid_until = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._elected = threading.Event()
        self._reachable = True
        self._thread = threading.Thread(target=self._run, name="kedge-leader-election", daemon=True)

    # -- public ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, resign: bool = True) -> None:
        """Stops campaigning; a leader resigns (revokes its lease) so a standby takes over at once."""
        self._stop.set()
        self._thread.join(timeout=self.config.ttl_s + self._client.timeout_s + 2.0)
        term = self._drop_term("stopped")
        if resign and term is not None:
            try:
                self._client.revoke_lease(term.lease_id)
            except EtcdError as error:
                log.warning("leader_resign_failed key=%s error=%r", self.key, str(error))

    def current(self) -> Leadership | None:
        """This process's term if it leads *now* (by its own clock), else None."""
        with self._lock:
            if self._term is not None and time.monotonic() < self._valid_until:
                return self._term
            return None

    def is_leader(self) -> bool:
        return self.current() is not None

    def wait_elected(self, timeout_s: float) -> bool:
        return self._elected.wait(timeout_s) and self.is_leader()

    def leader(self) -> LeaderInfo | None:
        """The current leader as stored in etcd (None: none now); raises EtcdError if unreachable."""
        kv = self._client.get(self.key)
        if kv is None:
            return None
        body = json.loads(kv.value)
        return LeaderInfo(str(body["id"]), str(body.get("address", "")), kv.create_revision)

    # -- the election thread --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._term is None:
                    self._campaign()
                else:
                    self._keep_term()
                self._set_reachable(True)
            except EtcdError as error:
                self._set_reachable(False, error)
                self._stop.wait(min(0.5, self.config.ttl_s / 6))
            except Exception:  # never let the election thread die: this process could never lead again
                log.exception("leader_election_error key=%s id=%s", self.key, self.candidate_id)
                self._stop.wait(min(0.5, self.config.ttl_s / 6))
            self._check_expiry()

    def _campaign(self) -> None:
        kv = self._client.get(self.key)
        if kv is not None:
            # Someone leads (possibly this process in a term it dropped while etcd was away: that
            # key expires by itself, as nobody refreshes its lease).
            self._client.wait_for_change(
                self.key, after_revision=kv.mod_revision, timeout_s=self.config.watch_s
            )
            return
        lease_id = self._client.grant_lease(self.config.ttl_s)
        sent = time.monotonic()
        result = self._client.txn(
            [Compare(self.key, "create", "==", 0)],
            [Put(self.key, self._value, lease_id), Get(self.key)],
            [Get(self.key)],
        )
        if result.succeeded:
            self._begin_term(
                Leadership(self.key, self.candidate_id, lease_id, result.ranges[0][0].create_revision), sent
            )
        else:
            self._client.revoke_lease(lease_id)

    def _keep_term(self) -> None:
        term = self._term
        assert term is not None
        sent = time.monotonic()
        ttl_left_s = self._client.keep_alive(term.lease_id)
        if ttl_left_s <= 0:
            self._drop_term("lease expired")
            return
        self._extend(sent)
        self._stop.wait(self.config.ttl_s / 3)

    def _begin_term(self, term: Leadership, sent: float) -> None:
        with self._lock:
            self._term = term
            self._valid_until = sent + self.config.ttl_s - self.config.safety_s
        log.info(
            "leader_elected key=%s id=%s revision=%d lease=%x",
            self.key,
            term.candidate_id,
            term.revision,
            term.lease_id,
        )
        self._elected.set()
        self._notify(term)

    def _extend(self, sent: float) -> None:
        with self._lock:
            self._valid_until = max(self._valid_until, sent + self.config.ttl_s - self.config.safety_s)

    def _check_expiry(self) -> None:
        if self._term is not None and time.monotonic() >= self._valid_until:
            self._drop_term("lease could not be refreshed in time")

    def _drop_term(self, why: str) -> Leadership | None:
        with self._lock:
            term, self._term = self._term, None
            self._valid_until = 0.0
        if term is not None:
            log.warning(
                "leader_deposed key=%s id=%s revision=%d reason=%r",
                self.key,
                term.candidate_id,
                term.revision,
                why,
            )
            self._elected.clear()
            self._notify(None)
        return term

    def _notify(self, term: Leadership | None) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(term)
        except Exception:
            log.exception("leader_on_change_failed key=%s", self.key)

    def _set_reachable(self, reachable: bool, error: EtcdError | None = None) -> None:
        if reachable == self._reachable:
            return
        self._reachable = reachable
        if reachable:
            log.warning("etcd_reachable key=%s id=%s", self.key, self.candidate_id)
        else:
            log.error(
                "etcd_unreachable key=%s id=%s error=%r: not acting as leader until it returns",
                self.key,
                self.candidate_id,
                str(error),
            )
