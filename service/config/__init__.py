"""The service's and the CLI's settings: `Settings` (service/config/settings.py), grouped (service/config/groups.py)."""

from service.config.settings import ENV_PREFIX, FLAT_PATHS, Settings

__all__ = ["ENV_PREFIX", "FLAT_PATHS", "Settings"]
