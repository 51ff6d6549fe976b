"""Helpers shared by the install unit and integration tests."""

from __future__ import annotations

import os

from support import clean_env


def install_env(**extra: str) -> dict[str, str]:
    """:func:`clean_env` without ``INSTALL_*`` variables: the test alone says what to install."""
    env = {k: v for k, v in clean_env().items() if not k.startswith("INSTALL_")}
    env.update(extra)
    return env


def pip_env(index_url: str, **extra: str) -> dict[str, str]:
    """Only our index: no user pip config, cache, find-links or extra indexes; no INSTALL_* leaks."""
    env = {k: v for k, v in install_env().items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1", PIP_INDEX_URL=index_url, **extra)
    return env
