"""Looking at adapters rather than merging them: describe them, compare their updates."""
