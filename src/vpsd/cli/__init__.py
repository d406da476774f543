"""Command-line entry points: ``vpsd`` (service and admin); ``vpsctl`` (client) comes later."""
