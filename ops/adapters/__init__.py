"""Adapters to outside systems, each typed against a port of ``domain.model.ports``:
SQL read-model database, runner locks, nonces, PostgreSQL async writer, Redis routing and
broker, the EVM (``evm``) and Stripe (``stripe``). Only the composition root wires them."""
