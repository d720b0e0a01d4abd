"""Tools for testing camlens and the pipelines built on it."""
