"""Which flavour a verification job runs on: the one asked for, or the smallest the region offers for the device."""

from __future__ import annotations

from collections.abc import Sequence

from modelarts_images.cloud.api import Flavor, FlavorType
from modelarts_images.errors import ConfigError
from modelarts_images.options import Device

# The spellings of an architecture in flavor_info.cpu.arch (the API's examples write x86; x86_64 is seen too).
ARCH = {"x86_64": "x86", "amd64": "x86", "x86": "x86", "aarch64": "aarch64", "arm64": "aarch64"}


def _arch(text: str) -> str:
    return ARCH.get(text.lower(), text.lower())


def flavor_type(device: Device) -> FlavorType:
    return {Device.GPU: FlavorType.GPU, Device.NPU: FlavorType.ASCEND}.get(device, FlavorType.CPU)


def _size(flavor: Flavor) -> tuple[int, int, float, str]:
    # The fewest accelerators first (one GPU is what a verification needs), then the fewest vCPUs and memory;
    # the id last, so that equal flavours are chosen the same way every time.
    return flavor.accelerators, flavor.cpus, flavor.memory_gib, flavor.id


def choose(offered: Sequence[Flavor], *, device: Device, arch: str, wanted: str | None = None,
           region: str = "", nodes: int = 1) -> Flavor:
    """`wanted` when the region offers it for this device, else the smallest flavour of the device's type and the
    image's architecture (a GPU or Ascend flavour with at least one chip) that takes `nodes` nodes (its max_num);
    ConfigError listing what the region offers."""
    kind = flavor_type(device)
    platform_arch = _arch(arch)
    fitting = [flavor for flavor in offered if flavor.type is kind and _arch(flavor.arch) in (platform_arch, "")
               and (kind is FlavorType.CPU or flavor.accelerators >= 1)]
    where = f" in {region}" if region else ""
    if nodes > 1:
        listed = "; ".join(f"{flavor.described} up to {flavor.max_nodes} node(s)"
                           for flavor in sorted(fitting, key=_size)) or "none"
        fitting = [flavor for flavor in fitting if flavor.max_nodes >= nodes]
    else:
        listed = "; ".join(flavor.described for flavor in sorted(fitting, key=_size)) or "none"
    if wanted:
        chosen = next((flavor for flavor in offered if flavor.id == wanted), None)
        if chosen is None or chosen not in fitting:
            why = ("is not offered" if chosen is None else
                   f"takes at most {chosen.max_nodes} node(s)" if chosen.type is kind and chosen.max_nodes < nodes
                   else f"is a {chosen.type} flavour for {chosen.arch or 'any architecture'}")
            raise ConfigError(f"--flavor {wanted}: {why}{where}; {kind} flavours for {platform_arch} offered: "
                              f"{listed}")
        return chosen
    if not fitting:
        if nodes > 1:
            raise ConfigError(f"no {kind} flavour for {platform_arch}{where} takes {nodes} nodes (offered: {listed}); "
                              "fewer --nodes, or another region")
        raise ConfigError(f"no {kind} flavour for {platform_arch} is offered{where} (training-job flavours: "
                          f"{', '.join(sorted(flavor.id for flavor in offered)) or 'none'}); pick another region "
                          "or --device")
    return min(fitting, key=_size)
