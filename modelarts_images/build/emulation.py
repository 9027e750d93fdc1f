"""Whether this machine can run another architecture's programs: an image for arm64 built or run on an x86_64
engine executes every step under QEMU user emulation, which the kernel starts through a binfmt_misc handler."""

from __future__ import annotations

from pathlib import Path

from modelarts_images.model import ARCH_SPELLINGS, docker_platform

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
# The ELF header's first 20 bytes of a 64-bit little-endian executable for each machine (e_machine 0xb7: AArch64,
# 0x3e: x86-64), as binfmt_misc handlers match them.
ELF_MAGIC = {"aarch64": "7f454c460201010000000000000000000200b700",
             "x86_64": "7f454c4602010100000000000000000002003e00"}
ENABLE_HINT = ("install Debian's qemu-user-static and register its handler (scripts/binfmt-up.sh does both: it writes "
               "/usr/lib/binfmt.d/qemu-aarch64.conf into /proc/sys/fs/binfmt_misc/register), or run the binfmt image "
               "BuildKit documents (docker run --privileged --rm tonistiigi/binfmt --install arm64); or build on an "
               "arm64 host")


def handler(arch: str, binfmt_dir: Path = BINFMT_DIR) -> str | None:
    """The name of an enabled binfmt_misc handler that runs `arch`'s executables, or None."""
    magic = ELF_MAGIC.get(arch)
    if magic is None or not binfmt_dir.is_dir():
        return None
    for entry in sorted(binfmt_dir.iterdir()):
        if entry.name in ("register", "status"):
            continue
        try:
            lines = entry.read_text("ascii", "replace").splitlines()
        except OSError:
            continue
        fields = dict(line.split(" ", 1) for line in lines if " " in line)
        if lines and lines[0] == "enabled" and _matches(magic, fields):
            return entry.name
    return None


def _matches(header_hex: str, fields: dict[str, str]) -> bool:
    """Whether a handler's magic, under its mask, matches this ELF header from offset 0, as the kernel compares:
    e_machine (bytes 18-19) is what tells aarch64's handler from riscv64's or x86_64's."""
    try:
        magic = bytes.fromhex(fields.get("magic", ""))
        mask = bytes.fromhex(fields["mask"]) if "mask" in fields else b"\xff" * len(magic)
        header = bytes.fromhex(header_hex)
    except ValueError:  # an extension handler (no magic) or an unreadable one
        return False
    if not magic or fields.get("offset", "0") != "0" or len(magic) > len(header):
        return False
    return all(header[i] & mask[i] == magic[i] & mask[i] for i in range(len(magic)) if i < len(mask))


def emulation_problem(image_arch: str, engine_arch: str, *, local_engine: bool,
                      binfmt_dir: Path = BINFMT_DIR) -> str | None:
    """Why an engine on `engine_arch` cannot build or run an `image_arch` image, or None. A remote engine's
    handlers are its host's, not this machine's: it is left to answer for itself."""
    engine = ARCH_SPELLINGS.get(engine_arch, engine_arch)
    if engine == image_arch or not local_engine:
        return None
    if handler(image_arch, binfmt_dir) is not None:
        return None
    where = binfmt_dir if binfmt_dir.is_dir() and any(binfmt_dir.iterdir()) else f"{binfmt_dir}, not mounted"
    return (f"the image is for {docker_platform(image_arch)} and the engine runs on {engine}, which takes QEMU user "
            f"emulation, but no binfmt_misc handler for {image_arch} is registered ({where}): {ENABLE_HINT}")
