"""Small but real wheel files for tests that need pip to read one."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile


def make_wheel(filename: str, *, requires: tuple[str, ...] = (), padding: int = 0) -> bytes:
    """A valid wheel named `filename`, declaring `requires`, with `padding` bytes of payload."""
    name, version = filename.split("-")[:2]
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"# placeholder\n" + b"#" * padding,
        f"{dist_info}/METADATA": (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                  + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: false\n",
    }
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for path, data in files.items()) + f"{dist_info}/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in files.items():
            archive.writestr(zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0)), data)
        archive.writestr(zipfile.ZipInfo(f"{dist_info}/RECORD", date_time=(2020, 1, 1, 0, 0, 0)), record)
    return buffer.getvalue()
