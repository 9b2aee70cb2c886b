"""kedge.hooks: the library imported by each training process (init, step heartbeat, collective
telemetry, progress page, checkpoint glue)."""
