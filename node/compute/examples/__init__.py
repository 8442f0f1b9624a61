"""Example compute pipelines that run offline: text embeddings (MiniLM), CSV column statistics, echo.

Each has a manifest beside it (``*.json``): profile it with ``aim-node profile --manifest``,
publish the report, then ``aim-node compute register <manifest> --listing <id>``.
"""
