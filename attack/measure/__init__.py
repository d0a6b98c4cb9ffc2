"""The measurement: test sets, clean performance, threat models, crafting and the transfer cells."""
