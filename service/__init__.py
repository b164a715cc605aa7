"""The counterfeit-scan HTTP service and the engine behind it (shared with the CLI)."""
