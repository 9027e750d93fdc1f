"""Secrets kept out of everything shown: URLs with user:password@, registry passwords, commands.

Every message, log line and printed plan goes through here. Nothing in this module raises: a URL it cannot
make sense of is shown with every candidate secret masked rather than refused.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence

MASK = "***"
# scheme://userinfo@ : the userinfo ends at the last '@' before the first '/', so a password holding '#', '?'
# or '@' (legal once percent-encoded, common when not) is found whole, where a URL parser would cut the authority
# early and leave the rest of the password in view (or, stripping credentials, in a label). Reading more as
# credentials than a parser would is the safe side: a host is never mistaken for part of a URL's path.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s]*)@")


def _split(address: str) -> tuple[str, str, str] | None:
    """(scheme://, userinfo, rest after '@') of the first URL in `address`, or None when it carries no userinfo.

    A URL without a scheme (a typo in a mirror setting) counts too."""
    match = _USERINFO.search(address)
    if match is not None:
        return match["scheme"], match["userinfo"], address[match.end():]
    authority = address.split("/", 1)[0]
    if "://" in address or "@" not in authority or any(c.isspace() for c in authority):
        return None
    userinfo = authority.rpartition("@")[0]
    return "", userinfo, address[len(userinfo) + 1:]


def _masked_userinfo(userinfo: str) -> str:
    user, colon, _ = userinfo.partition(":")
    return f"{user}:{MASK}" if colon else MASK  # a user alone is often a token: masked whole


def _mask_urls(message: str) -> str:
    return _USERINFO.sub(lambda m: m["scheme"] + _masked_userinfo(m["userinfo"]) + "@", message)


def has_credentials(address: str) -> bool:
    """Whether the URL carries a user name or password (user:token@host)."""
    return _split(address) is not None


def url(address: str) -> str:
    """The URL as messages show it: 'https://user:***@host/...', '***@host' for a token-only user; every URL
    in a longer text is masked the same way."""
    if _USERINFO.search(address) is None:
        parts = _split(address)  # no scheme
        return address if parts is None else _masked_userinfo(parts[1]) + "@" + parts[2]
    return _mask_urls(address)


def without_credentials(address: str) -> str:
    """The URL with any user:password@ removed (for pip.conf in the build context, labels, cache keys)."""
    if _USERINFO.search(address) is None:
        parts = _split(address)  # no scheme
        return address if parts is None else parts[2]
    return _USERINFO.sub(lambda m: m["scheme"], address)


def url_secrets(address: str) -> tuple[str, ...]:
    """The parts of a URL that must never be shown: its password, or a user name that stands alone (a token)."""
    parts = _split(address)
    if parts is None:
        return ()
    user, colon, password = parts[1].partition(":")
    return (password,) if colon else (user,)


def text(message: str, secrets: Iterable[str] = ()) -> str:
    """`message` with every secret replaced by ***, longest first (a secret containing another is fully masked),
    every URL's credentials masked as url() shows them (HTTP libraries quote URLs in their errors), and every
    token- or key-shaped word masked (has_token)."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        message = message.replace(secret, MASK)
    return _TOKEN.sub(MASK, _mask_urls(message))


def command(argv: Sequence[str], secrets: Iterable[str] = ()) -> str:
    """The argument list as a shell line, with credentials masked: for `+ cmd` echoes and --dry-run."""
    return text(shlex.join(argv), secrets)


def about(address: str, message: str) -> str:
    """`message` (an HTTP library's error about `address`, which may quote it) with that URL's secrets masked."""
    return text(message, url_secrets(address))


# Tokens whose issuers give them a recognisable shape: Hugging Face, GitHub, GitLab, OpenAI-style API keys,
# AWS access key ids, Slack, JSON web tokens, crypt(3) password hashes (a shadow file's), and PEM private keys.
_TOKEN = re.compile(r"\$(?:[0-9]{1,2}[a-z]?|y|gy|7)\$[./A-Za-z0-9=$,-]{8,}|"
                    r"\bhf_[A-Za-z0-9]{30,}|\bgh[pousr]_[A-Za-z0-9]{30,}|\bgithub_pat_[A-Za-z0-9_]{20,}|"
                    r"\bglpat-[A-Za-z0-9_-]{20,}|\bsk-[A-Za-z0-9_-]{20,}|\b(AKIA|ASIA)[0-9A-Z]{16}\b|"
                    r"\bxox[abprs]-[A-Za-z0-9-]{10,}|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.|"
                    r"-----BEGIN [A-Z ]*PRIVATE KEY-----(?:.*?-----END [A-Z ]*PRIVATE KEY-----|.*)", re.DOTALL)
# A word that reads as an assignment of a secret: PASSWORD=..., api_key: ..., "token": "..." (an environment
# dump, a .env file, a JSON document), its value masked up to the next space, quote or separator.
_ASSIGNED = re.compile(r"(?P<name>\b[\w.-]*(?:PASSWORD|PASSWD|PASSPHRASE|SECRET|TOKEN|CREDENTIALS?|_AK|_SK|APIKEY|"
                       r"API_KEY|ACCESS_KEY|SECRET_KEY|AUTH)\w*[\"']?\s*[:=]\s*[\"']?)(?P<value>[^\s\"',;&\x00]+)",
                       re.IGNORECASE)
# Whole words of a variable's name (HF_TOKEN, DB_PASSWORD, WANDB_API_KEY, SSH_KEY), not parts of one
# (TOKENIZERS_PARALLELISM, MONKEY_PATCH).
_SECRET_NAME = re.compile(r"(^|_)(PASSWORD|PASSWD|PASSPHRASE|SECRET|TOKEN|CREDENTIALS?|AK|SK|APIKEY|KEY)(_|$)",
                          re.IGNORECASE)
# Longest excerpt of a hostile value a message quotes: enough to find it, too short to carry a file's contents.
EXCERPT = 60


def has_token(value: str) -> bool:
    """Whether the text holds something shaped like an access token or a private key."""
    return _TOKEN.search(value) is not None


def excerpt(value: object, *, limit: int = EXCERPT) -> str:
    """`value` as a message may quote it: credentials of URLs, token-shaped words and assigned secrets masked, cut
    to `limit` characters with '…' where it was longer. A string is quoted (repr: line breaks and control
    characters escaped); anything else (a list, a number YAML gave) is shown as Python writes it."""
    raw = value if isinstance(value, str) else repr(value)
    masked = _ASSIGNED.sub(lambda m: m["name"] + MASK, text(raw))
    more = "…" if len(masked) > limit else ""
    if not isinstance(value, str):
        return masked[:limit] + more
    quoted = repr(masked[:limit])
    return quoted[:-1] + more + quoted[-1]


def secret_name(name: str) -> bool:
    """Whether a variable or key of this name holds a secret by its name (DB_PASSWORD, HF_TOKEN, SSH_KEY)."""
    return _SECRET_NAME.search(name) is not None
