"""shared/redact.py: credentials kept out of URLs, messages and commands as they are shown.

Also the assertions of the tests of what it replaced: context.has_credentials / without_credentials / redacted
(now has_credentials / without_credentials / url), engine.masked (now command) and swr.mask (now text).
"""

from __future__ import annotations

import pytest

from modelarts_images.shared import redact

INDEX = "https://robot:t0ken@pypi.example.com/simple"
TOKEN_ONLY = "https://t0ken@pypi.example.com/simple"
PLAIN = "https://pypi.example.com/simple"
# Passwords as users type them, unencoded: each of '#', '?', ':' and '@' would end the authority for urlsplit.
AWKWARD_PASSWORDS = ["p#ss", "p?ss", "p:ss", "p@ss", "a#b?c:d@e", "@lead", "trail@", "::"]


def test_mask_is_three_stars() -> None:
    assert redact.MASK == "***"


# --------------------------------------------------------------------------------------------------------------
# One URL: url, has_credentials, without_credentials, url_secrets


def test_credentials_are_recognised_removed_and_masked() -> None:
    """The assertions of the old test of context.has_credentials / without_credentials / redacted."""
    assert redact.has_credentials(INDEX)
    assert not redact.has_credentials(PLAIN)
    assert redact.has_credentials(TOKEN_ONLY)
    assert redact.without_credentials(INDEX) == PLAIN
    assert redact.url(INDEX) == "https://robot:***@pypi.example.com/simple"
    assert redact.url(TOKEN_ONLY) == "https://***@pypi.example.com/simple"


@pytest.mark.parametrize("address", [PLAIN, "", "http://127.0.0.1:5000/v2/", "https://h.example.com/users/@me",
                                     "https://h.example.com/simple?next=a@b", "file:///tmp/x.whl"])
def test_a_url_without_credentials_is_left_alone(address: str) -> None:
    assert redact.url(address) == address
    assert redact.without_credentials(address) == address
    assert not redact.has_credentials(address)
    assert redact.url_secrets(address) == ()


@pytest.mark.parametrize("password", AWKWARD_PASSWORDS)
def test_passwords_with_url_delimiters_are_masked_whole(password: str) -> None:
    address = f"https://mirror-user:{password}@mirror.example.com:8443/simple/?x=1#frag"
    assert redact.url(address) == "https://mirror-user:***@mirror.example.com:8443/simple/?x=1#frag"
    assert redact.has_credentials(address)
    assert redact.without_credentials(address) == "https://mirror.example.com:8443/simple/?x=1#frag"
    assert redact.url_secrets(address) == (password,)
    assert redact.text(f"GET {address} failed") == (
        "GET https://mirror-user:***@mirror.example.com:8443/simple/?x=1#frag failed")


@pytest.mark.parametrize("address", ["https://mirror.example.com", "https://mirror.example.com:8443"])
def test_a_url_without_a_path(address: str) -> None:
    with_login = address.replace("https://", "https://u:p@ss@")
    assert redact.url(with_login) == address.replace("https://", "https://u:***@")
    assert redact.without_credentials(with_login) == address
    assert redact.url_secrets(with_login) == ("p@ss",)


def test_a_token_only_user_is_masked_whole() -> None:
    assert redact.url("http://ghp_0123456789@127.0.0.1:8080/wheels/x.whl") == "http://***@127.0.0.1:8080/wheels/x.whl"
    assert redact.url_secrets("http://ghp_0123456789@127.0.0.1:8080/wheels/x.whl") == ("ghp_0123456789",)
    assert redact.without_credentials(TOKEN_ONLY) == PLAIN
    # An empty password still says the part before it is a user name, not a token.
    assert redact.url("https://robot:@pypi.example.com/simple") == "https://robot:***@pypi.example.com/simple"


def test_the_host_and_port_survive() -> None:
    assert redact.url("https://u:pw@[::1]:5000/v2/") == "https://u:***@[::1]:5000/v2/"
    assert redact.without_credentials("https://u:pw@[::1]:5000/v2/") == "https://[::1]:5000/v2/"


@pytest.mark.parametrize(("address", "shown", "secrets"), [
    ("mirror-user:s3cret@mirror.example.com/simple", "mirror-user:***@mirror.example.com/simple", ("s3cret",)),
    ("t0ken@mirror.example.com/simple", "***@mirror.example.com/simple", ("t0ken",)),
    ("mirror-user:p@ss@mirror.example.com/simple", "mirror-user:***@mirror.example.com/simple", ("p@ss",)),
    ("mirror-user:p#s?s@mirror.example.com", "mirror-user:***@mirror.example.com", ("p#s?s",)),
])
def test_a_url_without_a_scheme_is_masked_too(address: str, shown: str, secrets: tuple[str, ...]) -> None:
    """A mirror setting that lost its scheme still hides its credentials when shown."""
    assert redact.url(address) == shown
    assert redact.has_credentials(address)
    assert redact.url_secrets(address) == secrets


def test_without_a_scheme_an_at_sign_past_the_host_is_no_login() -> None:
    assert redact.url("mirror.example.com/users/@me") == "mirror.example.com/users/@me"
    assert not redact.has_credentials("mirror.example.com/users/@me")
    assert not redact.has_credentials("see user@example.com here")  # words, not one URL


def test_several_urls_in_one_text() -> None:
    message = "tried https://a:p1@h1.example.com/x, http://p2@h2.example.com/y and https://h3.example.com/z"
    expected = "tried https://a:***@h1.example.com/x, http://***@h2.example.com/y and https://h3.example.com/z"
    assert redact.url(message) == expected
    assert redact.text(message) == expected
    assert redact.without_credentials(message) == (
        "tried https://h1.example.com/x, http://h2.example.com/y and https://h3.example.com/z")
    # A URL without a path followed by another: each keeps its own host.
    assert redact.url("https://u:p@h1 https://v:q@h2") == "https://u:***@h1 https://v:***@h2"
    assert redact.url("https://u:p@h1/a,https://v:q@h2/b") == "https://u:***@h1/a,https://v:***@h2/b"


@pytest.mark.parametrize("odd", ["@", "://@", "http://[::1", "https://", "a b@c", "%", "user@", "\n@\n"])
def test_nothing_raises(odd: str) -> None:
    assert isinstance(redact.url(odd), str)
    assert isinstance(redact.has_credentials(odd), bool)
    assert isinstance(redact.without_credentials(odd), str)
    assert isinstance(redact.url_secrets(odd), tuple)
    assert isinstance(redact.text(odd, ["x"]), str)
    assert isinstance(redact.about(odd, odd), str)


# --------------------------------------------------------------------------------------------------------------
# Texts: text, command, about


def test_text_masks_every_secret_longest_first() -> None:
    """The assertions of the old test of swr.mask."""
    assert redact.text("user pw pwlonger pw", ["pw", "pwlonger"]) == "user *** *** ***"
    assert redact.text("nothing here", ["", "absent"]) == "nothing here"


@pytest.mark.parametrize("order", [["abc", "abc123"], ["abc123", "abc"]])
def test_a_secret_containing_another_is_masked_whole(order: list[str]) -> None:
    # Shortest first would leave '***123', which shows the end of the longer secret.
    assert redact.text("key=abc123 and abc", order) == "key=*** and ***"
    assert redact.text("key=abc123", iter(order)) == "key=***"  # any iterable, read once


def test_text_masks_url_credentials_it_was_not_given() -> None:
    assert redact.text(f"cannot download {INDEX}/torch/: 503") == (
        "cannot download https://robot:***@pypi.example.com/simple/torch/: 503")
    assert redact.text(f"{TOKEN_ONLY} and s3cret", ["s3cret"]) == "https://***@pypi.example.com/simple and ***"
    assert redact.text("") == ""


def test_command_masks_urls_and_secrets_as_a_shell_line() -> None:
    """The old test of engine.masked; the user name now stays, as url() shows it (was '***@')."""
    assert redact.command(["x", "--label", "u=https://robot:t0ken@h.example.com/simple"]) == (
        "x --label u=https://robot:***@h.example.com/simple")
    assert redact.command(["docker", "login", "-p", "s3cr3t", "two words"], ["s3cr3t"]) == (
        "docker login -p *** 'two words'")
    assert redact.command(["pip", "--index-url", "https://u:p#w@h.example.com/simple"]) == (
        "pip --index-url 'https://u:***@h.example.com/simple'")
    assert redact.command(["curl", TOKEN_ONLY]) == "curl https://***@pypi.example.com/simple"
    assert redact.command([]) == ""


def test_about_masks_what_a_library_says_about_the_url() -> None:
    address = "https://mirror-user:pw-123@mirror.example.com/simple"
    said = f"pw-123 rejected for mirror-user at {address}"
    assert redact.about(address, said) == "*** rejected for mirror-user at https://mirror-user:***@mirror.example.com/simple"
    assert redact.about("https://t0ken@h.example.com/x", "bad token t0ken") == "bad token ***"
    assert redact.about(PLAIN, "Max retries exceeded with url: /simple") == "Max retries exceeded with url: /simple"
