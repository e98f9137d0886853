"""Dataset builders: read the real files in the shared data folder into plain Python rows."""
