"""A coordinator-like candidate process for the HA tests: campaigns for leadership on a real etcd and
writes to the etcd store on request. Commands come one per line on stdin, answers go to stdout as JSON:

    write          set the job's step through the store, fenced by the live term (election.current)
    write-stale    the same with the term held when last asked (a write decided before a pause)
    status         {"leader": bool}
    quit

Usage: python ha_candidate.py ENDPOINT PREFIX CANDIDATE_ID JOB_ID
"""

from __future__ import annotations

import json
import sys

from kedge.coordinator.errors import StoreError
from kedge.coordinator.etcd_client import EtcdClient
from kedge.coordinator.etcd_store import EtcdStore
from kedge.coordinator.leader import LeaderElection, Leadership


def main() -> None:
    endpoint, prefix, candidate_id, job_id = sys.argv[1:5]
    client = EtcdClient([endpoint], timeout_s=1.0)
    store = EtcdStore(client, prefix)
    election = LeaderElection(client, store.leader_key, candidate_id=candidate_id)
    held: list[Leadership | None] = [None]
    election.start()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        if command == "status":
            held[0] = election.current() or held[0]
            answer: dict[str, object] = {"leader": held[0] is not None and election.is_leader()}
        else:
            source = election.current if command == "write" else (lambda: held[0])
            store.attach_leadership(source)
            try:
                job = store.get_job(job_id)
                assert job is not None
                store.set_job_step(job_id, 1000, incarnation=job.incarnation)
                answer = {"written": True}
            except StoreError as error:
                answer = {"written": False, "error": type(error).__name__, "reason": str(error)}
        print(json.dumps(answer), flush=True)
    election.stop()
    client.close()


if __name__ == "__main__":
    main()
