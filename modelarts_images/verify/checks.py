"""One check's outcome, the same for the script's results, the entry comparison and ModelArts' rules."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modelarts_images.shared.choices import Choice


class CheckStatus(Choice):
    PASS = "pass"
    FAIL = "FAIL"  # the only status that fails an image
    WARN = "warn"  # reported and kept, does not fail the image
    SKIP = "skip"  # nothing to check


@dataclass(frozen=True, kw_only=True)
class CheckOutcome:
    """One check: its name, whether it passed, and what was seen."""

    name: str
    ok: bool
    detail: str
    warning: bool = False  # a failed outcome that is reported but does not fail the image
    skipped: bool = False  # nothing to check (ok is True)

    @property
    def status(self) -> CheckStatus:
        if self.skipped:
            return CheckStatus.SKIP
        if self.ok:
            return CheckStatus.PASS
        return CheckStatus.WARN if self.warning else CheckStatus.FAIL

    @property
    def blocking(self) -> bool:
        return not self.ok and not self.warning

    def line(self) -> str:
        return f"[{self.status:>4}] {self.name}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.value, "ok": self.ok, "detail": self.detail}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckOutcome:
        """What to_json() wrote, or a check of the verification script's result line (name, ok, detail)."""
        status = data.get("status")
        return cls(name=str(data["name"]), ok=data["ok"] is True, detail=str(data.get("detail", "")),
                   warning=status == CheckStatus.WARN.value, skipped=status == CheckStatus.SKIP.value)


def failure_message(subject: str, outcomes: Iterable[tuple[str, CheckOutcome]]) -> str | None:
    """One message naming each failed (blocking) check, as `where/name: detail` lines; None when none failed.

    `outcomes` pairs each outcome with where it was checked ("cpu", "gpu", "conformance")."""
    failed = [(where, outcome) for where, outcome in outcomes if outcome.blocking]
    if not failed:
        return None
    lines = [f"  {where}/{outcome.name}: {outcome.detail}" for where, outcome in failed]
    names = ", ".join(f"{where}/{outcome.name}" for where, outcome in failed)
    return f"{subject} failed verification ({len(failed)} check(s): {names}):\n" + "\n".join(lines)
