"""The rules: limits, the server state machine, tenancy, and one transaction per action."""
