"""Image references and tags: naming rules that need no network."""

from __future__ import annotations

from modelarts_images.model import X86_64, Accelerator


def derived_tag(*, torch: str, accelerator: Accelerator, arch: str = X86_64) -> str:
    """The tag an entry gets when it names none: '1.8.1-cuda10.2', '2.5.1-cpu', '2.6.0-cann8.2.RC1-910b', and for
    another architecture than x86_64 (Ascend's is always aarch64) '2.9.1-cpu-aarch64': a tag per architecture,
    not a multi-platform manifest list."""
    suffix = f"-{arch}" if arch != X86_64 and not accelerator.is_npu else ""
    return f"{torch}-{accelerator.label}{suffix}"
