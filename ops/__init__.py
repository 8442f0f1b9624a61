"""How the hub is assembled and run: settings, the composition root, the CLI, service config."""
