"""Evaluation and the real experiment for seedlora (not part of the installed library)."""
