"""Benchmarks: Hatchway against direct OpenSSH on one machine (run with ``bench/run``)."""
