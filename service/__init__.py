"""The counterfeit-scan HTTP service and the parts behind it (service/core.py, shared with the CLI)."""
