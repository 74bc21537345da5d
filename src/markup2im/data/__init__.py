"""Datasets: rendering markup, synthetic markup, and the one on-disk dataset form."""
