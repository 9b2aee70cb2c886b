"""The lazy asynchronous multi-level checkpoint engine (DataStates-LLM style).

Order of work for one checkpoint, and the thread that does each part:

1. training thread: `Checkpointer.save()` flattens the state (`plan_save`, cached), records a CUDA
   event on the compute stream (CUDA) and enqueues the job; it returns a `CheckpointHandle` at once.
2. snapshot thread: copies every shard this rank writes into slabs of the pinned host pool
   (`pool.HostPool`), on a side CUDA stream ordered after the event (CUDA) or by plain `copy_` (CPU,
   the GIL is released while copying). A shard larger than a slab streams through as several chunks.
3. training thread again, only at the next `optimizer.step()`: the step pre-hook (`guard`) blocks until
   the snapshot is complete (on CUDA it only makes the compute stream wait on the copy event).
4. writer threads (bounded): encode (codec, CRC32C) and append each slab's chunks to the local level,
   release the slab, write the rank fragment; rank 0 commits the step (manifest last).
5. remote thread: copies the committed local step's files to the remote level (retries with backoff),
   commits there; retention runs per level after each commit.

A failure in a background level marks that checkpoint failed at that level, is logged, counted in
`metrics.CheckpointMetrics` and raised as `CheckpointFailed` from the next `save()`/`wait()`.
"""
