"""Sync CI-built images from GitHub Actions artifacts to a GitLab container registry.

The push path needs no docker daemon: it reads ``docker save`` archives and speaks the OCI distribution
API directly (``oci``), so an 11 GiB artifact streams from disk to the registry in bounded memory.
"""

from fleetci.registry.settings import RegistrySettings, registry_settings

__all__ = ["RegistrySettings", "registry_settings"]
