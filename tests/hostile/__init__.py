"""Hostile input, tenancy and secrecy tests (issue 4)."""
