"""Seeded discrete-event simulator of large training clusters driving the real kedge coordinator.

Modules: `clock` (virtual time, seeded randomness), `rates` (published failure rates and the fault
mix), `faults` (fault kinds and their schedule), `workload` (step and collective timing of a
synchronous job), `cluster` (simulated nodes, ranks and agents producing reports), `ettr` (effective
training time ratio: Young/Daly analysis and a Monte-Carlo job model), `adapter` (the boundary to the
coordinator under test) and `driver` (one scenario end to end, with measurements).
"""
