"""The worker: runs configured jobs on a schedule, tracks episodes, and delivers them through the outbox to the sinks."""
