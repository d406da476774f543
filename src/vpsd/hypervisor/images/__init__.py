"""Guest images: recipes, building them with mmdebstrap, and the files servers boot from.

Database-free, like the rest of ``hypervisor/``: ``vpsd.services.images`` records which
built images a host offers.
"""
