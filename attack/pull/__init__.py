"""The store client: bounded, verified downloads of a checkpoint store."""
