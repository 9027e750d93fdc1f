"""arm64 under QEMU user emulation against x86_64: a cold build and a verification of an entry for each, on this
x86_64 engine (figures, no goal).

1. The engine tier's entry for each architecture: the stand-in installer on the debootstrapped bookworm base
   (modelarts-test-base:bookworm, and :bookworm-arm64 for arm64), a CPU torch for Python 3.11 and its dependency
   wheels and the install tool resolved for that architecture (the tool's own pip_for_target, so aarch64's markers
   hold). The torch releases differ, as no other pair is reachable here: x86_64's CPU build is torch 2.13.0+cpu
   (the engine tier's), and the newest aarch64 CPU build PyPI serves is 2.6.0 (later aarch64 wheels there carry
   CUDA); each wheel's size is reported beside the times.
2. Each is built cold with BuildKit (builder.build_image, --no-cache) and verified on the CPU (verify_image: the
   script's container, the conformance probes), in-process, once: a cold build takes minutes under emulation.
3. `key: value` lines on stdout and bench/results/arm64.json; the images are removed afterwards.

Run with `nox -s bench -- arm64` or `PYTHONPATH=. .venv/bin/python bench/bench_arm64.py`; needs the Docker Engine,
both test bases (scripts/test-base-image.sh, with `... arm64` for the second) and a binfmt_misc handler for aarch64
(scripts/binfmt-up.sh). About 10 minutes on 2 cores.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: the project and its tests' helpers

from modelarts_images.build import builder  # noqa: E402
from modelarts_images.engine.adapter import DockerEngine, connect  # noqa: E402
from modelarts_images.engine.api import Backend  # noqa: E402
from modelarts_images.http import pip_resolver  # noqa: E402
from modelarts_images.model import AARCH64, ImageSpec  # noqa: E402
from modelarts_images.options import BuildOptions, Device, VerifyOptions  # noqa: E402
from modelarts_images.verify.verifier import verify_image  # noqa: E402
from tests.support.engine_tier import (  # noqa: E402
    ARM64_BASE,
    ARM64_TORCH,
    STAND_IN_INSTALLER,
    TEST_BASE,
    TORCH_VERSION,
    arm64_wheels,
    fetched_image,
    find_torch_wheel,
    image_spec,
    remove_image,
)

RESULTS = ROOT / "bench" / "results" / "arm64.json"


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def download_for(image: ImageSpec, requirements: list[str], dest: Path, *, no_deps: bool = False) -> list[Path]:
    """pip download for the image's Python and architecture, its markers evaluated for the image."""
    dest.mkdir(parents=True, exist_ok=True)
    command, env = pip_resolver.pip_for(image)
    subprocess.run([*command, "download", "--disable-pip-version-check", "--quiet",
                    *pip_resolver.target_options(image), *(["--no-deps"] if no_deps else []), "-d", str(dest),
                    *requirements], env=env, check=True)
    return sorted(dest.glob("*.whl"))


def measure(engine: DockerEngine, spec: ImageSpec, torch_wheel: Path, work: Path) -> dict[str, float]:
    closure = [path for path in download_for(spec, [str(torch_wheel)], work / "closure")
               if path.name != torch_wheel.name]
    tools = download_for(spec, [pip_resolver.INSTALL_TOOL], work / "tools", no_deps=True)
    fetched = fetched_image(spec, cache_dir=work / "cache", installer=STAND_IN_INSTALLER, wheels=[torch_wheel],
                            closure=closure, tools=tools)
    options = BuildOptions(backend=Backend.BUILDKIT, work_dir=work / "build", no_cache=True)
    builder.check_bases([spec], options, engine)
    log(f"{spec.arch}: cold build of {spec.reference}")
    started = time.monotonic()
    built = builder.build_image(fetched, options, engine)
    build_s = time.monotonic() - started
    log(f"{spec.arch}: built in {build_s:.1f} s; verifying")
    started = time.monotonic()
    report = verify_image(engine, spec, options=VerifyOptions(reports_dir=work / "reports"), devices=(Device.CPU,))
    verify_s = time.monotonic() - started
    if not report.ok:
        raise SystemExit(f"{spec.arch}: the verification failed: {report.to_json()}")
    return {"build_s": round(build_s, 1), "verify_s": round(verify_s, 1),
            "script_s": round(report.runs[0].seconds, 1), "image_bytes": built.size,
            "torch_wheel_bytes": torch_wheel.stat().st_size}


def main() -> None:
    engine = connect()
    run = uuid.uuid4().hex[:8]
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-arm64-") as scratch:
        work = Path(scratch)
        x86 = image_spec(tag=f"bench-x86-{run}", repository="modelarts-bench-arm64")
        arm = dataclasses.replace(image_spec(tag=f"bench-arm64-{run}", repository="modelarts-bench-arm64",
                                             base_image=ARM64_BASE, torch=ARM64_TORCH), arch=AARCH64)
        cases = ((x86, find_torch_wheel(work / "x86-wheel")), (arm, arm64_wheels(work / "arm64-wheels")["torch"]))
        try:
            for spec, wheel in cases:
                figures[spec.arch] = measure(engine, spec, wheel, work / spec.arch)
        finally:
            for spec, _ in cases:
                remove_image(engine.client, spec.reference)
    x86_figures, arm_figures = figures["x86_64"], figures[AARCH64]
    result = {
        "x86_64": {**x86_figures, "torch": TORCH_VERSION}, "aarch64_emulated": {**arm_figures, "torch": ARM64_TORCH},
        "build_ratio": round(arm_figures["build_s"] / x86_figures["build_s"], 2),
        "verify_ratio": round(arm_figures["verify_s"] / x86_figures["verify_s"], 2),
        "bases": [TEST_BASE, ARM64_BASE],
    }
    for key, value in result.items():
        print(f"{key}: {value}")
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", "utf-8")


if __name__ == "__main__":
    main()
