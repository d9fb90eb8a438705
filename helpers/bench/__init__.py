"""Benchmarks: this project's paths timed against the original study's, the book's
costs, the full profile at scale, preflight checks and the benchmark page's tables."""
