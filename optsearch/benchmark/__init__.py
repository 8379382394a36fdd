"""Evolved genomes against tuned baselines on held-out tasks: contenders, tuning, paired runs, report and plots."""
