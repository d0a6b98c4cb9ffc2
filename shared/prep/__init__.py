"""Data preparation, run before a federation and never shipped to the sites: readers, split,
overlap, mapping, check, synthetic twin."""
