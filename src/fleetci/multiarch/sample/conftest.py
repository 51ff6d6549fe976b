"""Makes ``mathkit`` importable from the project root (the sample has no packaging)."""
