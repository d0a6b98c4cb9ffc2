"""Code shared by the server, the clients and the attack service."""
