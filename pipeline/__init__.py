"""Orchestration across rooms: the demo and its quality bar, the multi-variant study and its resume rules."""
