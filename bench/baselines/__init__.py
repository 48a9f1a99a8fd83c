"""Baselines that need software our own environment cannot hold (Ray Workflows needs
``ray==2.47.1``; we run Ray 2.60), each in its own virtualenv under ``bench/``, run as a
subprocess that prints its timings as one JSON object on stdout."""
