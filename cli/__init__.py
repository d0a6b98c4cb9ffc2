"""The entry layer: the `fedattack` command line. It parses and wires; the work is done in
the rooms below it (shared, server, clients, attack, deploy)."""
