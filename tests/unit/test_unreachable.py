"""What the CLI, proxy and agent say when the server cannot be reached."""

from __future__ import annotations

import ssl

from hatchway.unreachable import untrusted_certificate, why_unreachable

URL = "https://hatchway.example.com"


def _cert_error() -> ssl.SSLCertVerificationError:
    err = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    err.verify_message = "unable to get local issuer certificate"
    return err


def _wrapped(inner: BaseException, outer: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as e:
            raise outer from e
    except BaseException as e:
        return e


def test_an_untrusted_certificate_says_how_to_trust_it() -> None:
    text = why_unreachable(URL, _cert_error())
    assert text == (
        f"the TLS certificate of the Hatchway server at {URL} is not trusted here (unable to get local issuer "
        "certificate); install the CA that signed it in this machine's trust store, or point SSL_CERT_FILE at "
        "a PEM file holding it"
    )


def test_the_certificate_error_is_found_behind_library_wrappers() -> None:
    deep = _wrapped(_wrapped(_cert_error(), OSError("httpcore")), RuntimeError("httpx ConnectError"))
    assert isinstance(untrusted_certificate(deep), ssl.SSLCertVerificationError)
    assert "SSL_CERT_FILE" in why_unreachable(URL, deep)


def test_other_failures_keep_their_own_words() -> None:
    assert why_unreachable(URL, ConnectionRefusedError(111, "Connection refused")) == (
        f"cannot reach the Hatchway server at {URL}: [Errno 111] Connection refused; is it running?"
    )
    assert why_unreachable(URL, TimeoutError()) == f"cannot reach the Hatchway server at {URL}: TimeoutError; is it running?"


def test_a_cyclic_exception_chain_ends() -> None:
    a, b = OSError("a"), OSError("b")
    a.__context__, b.__context__ = b, a
    assert untrusted_certificate(a) is None
