"""The HTTP surfaces of the service (Flask). Nothing here computes a score."""
