"""Pydantic's validation errors in vpsd's words, for every front (the API's error bodies,
the panel's inline form errors)."""

from __future__ import annotations

from typing import Any


class OversizedInteger:
    """What strict JSON parsing reads in place of an integer literal too long to convert
    (``vpsd.api.strict_json``): no field accepts it, and its error names the field."""

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<integer of {self.digits} digits>"


def validation_message(error: dict[str, Any]) -> str:
    """What is wrong with one field, in words (pydantic's error, from ``errors()``)."""
    kind = error.get("type", "")
    if kind == "json_invalid":
        reason = error.get("ctx", {}).get("error", "")
        return f"malformed JSON: {reason}" if reason else "malformed JSON"
    if kind == "extra_forbidden":
        return "unknown field"
    if isinstance(error.get("input"), OversizedInteger):
        return f"integer too large ({error['input'].digits} digits)"
    if kind == "missing":
        return "this field is required"
    if kind == "value_error":
        # pydantic prefixes our validators' messages with "Value error, ".
        return str(error.get("ctx", {}).get("error", "invalid value"))
    if kind == "string_pattern_mismatch":
        return "only letters A-Z a-z, digits, '-' and '_' are allowed"
    return str(error.get("msg", "invalid value"))
