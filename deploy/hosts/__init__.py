"""The networked, locked-down deployment: server and site hosts, Fleet proxy, signed app,
credentials, store server."""
