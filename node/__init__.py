"""The node agent (aim-node): keystore, enrollment, local profiling and signed publishing."""
