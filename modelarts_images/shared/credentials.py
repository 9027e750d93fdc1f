"""A registry login, and the AK inside an SWR long-term login's user name, never shown whole.

Kept apart from SWR's naming rules (publish/swr.py) because every layer that carries a login needs it: the
registry's HTTP client, the engine's login and push, and the steps that look one up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from modelarts_images.shared import redact

# A project name: the region's own, or a sub-project's, which IAM names `<region>_<name>`.
PROJECT_NAME = re.compile(r"^(?P<region>[a-z]{2,}(?:-[a-z]+)+-[0-9]+)(?:_[A-Za-z0-9_-]{1,54})?$")


def access_key_in(user: str) -> str:
    """The AK of a long-term login user name ('' for any other user name)."""
    project, at, key = user.partition("@")
    return key if at and PROJECT_NAME.match(project) and len(key) > 4 else ""


def hide_key(user: str) -> str:
    """'cn-north-4@HPUAEXAMPLEKEY' -> 'cn-north-4@HPUA…': the AK is an identifier, but need not be shown whole."""
    key = access_key_in(user)
    return f"{user.partition('@')[0]}@{key[:4]}…" if key else user


@dataclass(frozen=True, kw_only=True)
class Credentials:
    """A registry login. The password never shows in repr() or str()."""

    registry: str
    username: str
    password: str = field(repr=False)
    source: str  # where it came from, for messages: 'HUAWEICLOUD_SDK_AK/HUAWEICLOUD_SDK_SK (long-term login)'
    check: str = ""  # what to check when the registry refuses it, naming variables and settings, never values

    def __repr__(self) -> str:
        return (f"Credentials(registry={self.registry!r}, username={self.shown_user!r}, password='{redact.MASK}', "
                f"source={self.source!r})")

    __str__ = __repr__

    @property
    def shown_user(self) -> str:
        """The user name as logs show it: an AK inside it is cut to its first four characters."""
        return hide_key(self.username)

    @property
    def secrets(self) -> tuple[str, ...]:
        """What every log line and message must mask: the password, and the AK of a long-term login."""
        return tuple(secret for secret in (self.password, access_key_in(self.username)) if secret)

    def rejected(self, detail: str = "") -> str:
        """The one line for a registry that refused this login (401, 'unauthorized', 'denied'): the registry,
        whose login and where it came from (variable names), the registry's own words, and what to check."""
        said = f" ({detail})" if detail else ""
        check = f"; {self.check}" if self.check else ""
        return self.hide(f"{self.registry} rejected the login of {self.shown_user} (from {self.source}): wrong user "
                         f"name or password{said}{check}")

    def hide(self, text: str) -> str:
        """`text` as messages may show it: the user name as shown_user (an AK cut to its first characters, as a
        registry's error may quote the whole user name), every secret masked."""
        if self.username != self.shown_user:
            text = text.replace(self.username, self.shown_user)
        return redact.text(text, self.secrets)
