"""Why the Hatchway server could not be reached, said so a person can fix it.

A server behind TLS with a certificate from a private CA is the common production set-up, and
OpenSSL's "certificate verify failed" next to "is it running?" sends people the wrong way. The
CLI, ``hatchway proxy`` and the agent all say it the same way.
"""

from __future__ import annotations

import ssl

CERT_HINT = (
    "install the CA that signed it in this machine's trust store, or point SSL_CERT_FILE at a PEM file "
    "holding it"
)

#: What to check when something other than Hatchway's API answers at the server's URL (a
#: reverse proxy's error page, a captive portal, another program on that port).
NOT_HATCHWAY_ADVICE = (
    "check the URL (hatchway login URL) and that the Hatchway server is running there, "
    "behind its proxy if it has one"
)


def no_answer(url: str, seconds: float, what: str = "answer") -> str:
    """A server that took the connection and then said nothing: reached, so "is it running?"
    would send people the wrong way; overloaded or stuck is what it usually means."""
    return (
        f"the Hatchway server at {url} accepted the connection but sent no {what} within {seconds:g} s; "
        "it may be overloaded or stuck: try again, and if it goes on, check the server's log"
    )


def untrusted_certificate(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind ``exc`` (HTTP libraries wrap it), if any."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def why_unreachable(url: str, exc: BaseException) -> str:
    """One sentence: what failed reaching ``url`` and what to do about it."""
    bad = untrusted_certificate(exc)
    if bad is not None:
        reason = bad.verify_message or str(bad)
        return f"the TLS certificate of the Hatchway server at {url} is not trusted here ({reason}); {CERT_HINT}"
    return f"cannot reach the Hatchway server at {url}: {str(exc) or type(exc).__name__}; is it running?"
