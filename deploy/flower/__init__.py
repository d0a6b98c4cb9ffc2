"""Driving Flower's own processes and CLI: commands, process groups, connections, progress."""
