"""Command-line entry points: ``vpsd`` (service and admin) and ``vpsctl`` (the API client)."""
