"""The shared-store tests' ``redis-server``: :class:`fleetci.testing.redis.RedisServer` (the one wrapper,
also used by ``bench cache --backend redis``) with a fixed password the tests can look for in output."""

from __future__ import annotations

from dataclasses import dataclass

from fleetci.testing.redis import RedisServer as _RedisServer

PASSWORD = "s3cret-redis-pw"


@dataclass
class RedisServer(_RedisServer):
    password: str = PASSWORD
