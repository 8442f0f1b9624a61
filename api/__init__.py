"""The hub's HTTP API: a Falcon WSGI app built by ``api.app.create_app`` (after fork)."""
