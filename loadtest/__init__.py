"""Load and benchmark tools: `python -m loadtest.core_bench` measures the core."""
