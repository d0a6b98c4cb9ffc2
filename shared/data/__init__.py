"""Data layer: readers for the real dataset layouts, site splits, cache, synthetic twin."""
