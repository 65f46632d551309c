"""A model server's credentials masked out of what it sends back (``shared.logging.CredentialMask``): its API key, and
the secrets of its URL in every form a server could quote them."""

from __future__ import annotations

from shared.logging import CredentialMask


def test_the_key_and_the_urls_password_as_written_and_as_sent_are_masked() -> None:
    """A password written percent-encoded in ``UPSTREAM_URL`` (``p%40ss-word``) is sent decoded (``p@ss-word``): a
    server quoting what it was sent quoted the decoded form, which the mask, knowing only the written one, let by."""
    mask = CredentialMask("sk-key-123", "https://user:p%40ss-word@models.example/v1")
    said = "key sk-key-123 refused; basic auth user:p@ss-word; raw p%40ss-word"
    assert mask(said) == "key *** refused; basic auth user:***; raw ***"


def test_a_token_given_as_the_urls_user_name_is_masked_and_a_short_name_is_not() -> None:
    """``https://TOKEN@host`` (a token as the user name alone, sent as Basic auth) was never masked; a short user
    name with a password (``admin:pw@``) is a name, left as it is."""
    assert CredentialMask(None, "https://tok_abcdef123456@models.example/v1")(
        "unknown token tok_abcdef123456") == "unknown token ***"
    assert CredentialMask(None, "https://admin:pw-secret@models.example/v1")(
        "admin said pw-secret") == "admin said ***"


def test_nothing_is_masked_without_credentials() -> None:
    assert CredentialMask(None, "http://127.0.0.1:8000/v1")("all is well at 127.0.0.1") == "all is well at 127.0.0.1"
