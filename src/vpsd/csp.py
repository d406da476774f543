"""The Content-Security-Policy of vpsd's pages: the API docs and the web panel."""

from __future__ import annotations


def content_security_policy(nonce: str | None = None) -> str:
    """The CSP of vpsd's pages (these docs, the web panel): their own origin only, no inline
    style, and inline script only with ``nonce`` (none without one).

    Swagger UI's stylesheet embeds its icons as ``data:`` images; its requests (the document,
    "Try it out") go to this origin.
    """
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src 'self' 'nonce-{nonce}'" if nonce else "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )
