"""The application layer: the eventsourcing ``Application`` (``domain.app.marketplace``) and
one service per area, composed into it. Adapters come in through constructors, typed by
the ports in ``domain.model.ports``."""
