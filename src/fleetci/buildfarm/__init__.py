"""Distributed package builds: recipes, the master service, self-registering workers, the benchmark."""
