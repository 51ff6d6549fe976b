"""``fleetci bench <capability>``: each benchmark against a baseline in the same run (ratios).

Benchmarks and the fleet simulation sit above the capabilities and the emulators, so no capability
imports ``fleetci.testing``.
"""
