"""kedge.ckpt: the lazy asynchronous multi-level checkpointer and the universal checkpoint format.

torch is imported lazily, so `ckpt --help` and format inspection start fast.
"""
