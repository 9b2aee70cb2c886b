"""The kedge coordinator: membership, leases, C4-style diagnosis, policy and recovery actions.
Never imports torch."""
