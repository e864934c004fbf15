"""Looking at adapters rather than merging them: describe them, compare their updates, and
diagnose the training imbalance of seed runs (diagnose)."""
