"""journeywatch benchmarks: `make bench` runs them and rewrites docs/benchmarks.md."""
