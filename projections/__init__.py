"""Read models built from the event log, each with exactly-once tracking (see ``base``)."""
