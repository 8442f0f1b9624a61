"""The hub's HTTP API: a Falcon ASGI app built by ``api.app.create_app`` (after fork)."""
