"""Container tooling: the wheelhouse for offline image builds (the shell scripts beside
this file build the base image and the project image)."""
