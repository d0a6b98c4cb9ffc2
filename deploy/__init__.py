"""Operating Flower on hosts: the local launcher, the networked deployment (SuperLink,
SuperNodes, key registration, run submission, store serving), credentials and the
per-site data export. Never imported by the Flower apps themselves."""
