"""Scale self-hosted runner pools from queued jobs read through the cache (issue 17, seed 004).

``from fleetci.autoscale import GitHubRunnerAutoscaler; GitHubRunnerAutoscaler(owner="org").run()``;
``fleetci autoscale`` on the command line. See docs/autoscale.md.
"""

from __future__ import annotations

from fleetci.autoscale.pools import Decision, Pool, parse_pool, parse_pools
from fleetci.autoscale.providers import CommandProvider, DockerProvider, Provider, ScaleRequest
from fleetci.autoscale.scaler import GitHubRunnerAutoscaler

__all__ = [
    "CommandProvider",
    "Decision",
    "DockerProvider",
    "GitHubRunnerAutoscaler",
    "Pool",
    "Provider",
    "ScaleRequest",
    "parse_pool",
    "parse_pools",
]
