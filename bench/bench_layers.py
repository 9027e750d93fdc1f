"""Layer benchmark: a cold build against the recipe's, what a rebuild and a second image push, and how long a
verification takes against a bare `docker run`.

The entry is the engine tests' (stand-in installer, the CPU torch 2.13.0 wheel and its dependency wheels from the
host's index), on modelarts-test-base:bookworm plus a file naming the run (run_base in tests/support/engine_tier.py: no
cache record of an earlier run can stand in for this one's), built through modelarts_images.build with each backend.

1. Cold build, side by side, `--no-cache` for both: ours (context assembly included) against the original
   recipe's Dockerfile adapted as bench_build.py does (FROM lines, where its files come from), plus, for the
   classic builder, the two lines it cannot build as written (`./tmp` gains its trailing slash, `--chown=ma-user`
   gains the group 100). Two pairs per backend, recipe then ours, then ours then recipe, each build started after a
   sync: the disk makes one build vary by a third from one minute to the next, and a build that follows another
   would otherwise pay for the writes of the one before it; the ratio is of the sums. Goal: at most 0.8 of the
   recipe's time on each backend.
2. A registry on 127.0.0.1:<free port> (scripts/registry-up.sh); the image pushed, rebuilt with `--no-cache` under a
   new tag and pushed again: the second push's compressed bytes against the first's. Goal: at most 5 %.
3. A second entry that differs only in its stack (six): built, pushed; its bytes sent against its image size.
4. `inv verify --device cpu` of the image against `docker run --rm IMAGE python -c 'import torch'`, alternating,
   three runs each after one of each to warm the page cache and write the project's bytecode, each after a sync,
   medians. Goal: at most 1.5 times.

`key: value` lines on stdout, bench/results/layers.json; the images and the registry are removed afterwards.
Run with `nox -s bench -- layers` or `PYTHONPATH=. .venv/bin/python bench/bench_layers.py`; about ten minutes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: the project and its tests' helpers

from bench.bench_build import RECIPE, adapt_recipe, recipe_dockerfile, write_recipe_context  # noqa: E402
from modelarts_images.build import builder as build  # noqa: E402
from modelarts_images.engine.adapter import connect  # noqa: E402
from modelarts_images.engine.api import Backend  # noqa: E402
from modelarts_images.engine.cli import BuildKitMode, find_buildkit_cli  # noqa: E402
from modelarts_images.model import FetchedImage  # noqa: E402
from modelarts_images.options import BuildOptions, PushOptions  # noqa: E402
from modelarts_images.publish import publisher  # noqa: E402
from modelarts_images.shared.text import size  # noqa: E402
from tests.support import engine_tier as engine_tests  # noqa: E402
from tests.support.engine_tier import run_base  # noqa: E402
from tests.support.registry import start_registry, stop_registry  # noqa: E402

GOALS = {"cold_build_ratio": 0.8, "rebuild_push_share": 0.05, "verify_ratio": 1.5}
REPOSITORY = "modelarts-images-bench-layers"
PAIRS = 2


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def fetched_entry(work: Path, registry: str, tag: str, base: str) -> FetchedImage:
    cache = work / "cache"
    cache.mkdir()
    torch = engine_tests.find_torch_wheel(work / "download")
    closure = engine_tests.download_closure([torch], work / "closure")
    spec = dataclasses.replace(engine_tests.image_spec(tag=tag, base_image=base),
                               registry=registry, organization="bench", repository=REPOSITORY)
    return engine_tests.fetched_image(spec, cache_dir=cache, installer=engine_tests.STAND_IN_INSTALLER,
                                      wheels=[torch], closure=closure,
                                      tools=engine_tests.download_tools(work / "tools"))


def retagged(fetched: FetchedImage, tag: str, **changes: Any) -> FetchedImage:
    return dataclasses.replace(fetched, image=dataclasses.replace(fetched.image, tag=tag), **changes)


def recipe_context(work: Path, fetched: FetchedImage, *, classic: bool) -> Path:
    dockerfile, _ = adapt_recipe(recipe_dockerfile(RECIPE.read_text("utf-8")), installer=fetched.installer.filename,
                                 wheels=[wheel.filename for wheel in fetched.wheels], base=fetched.image.base_image)
    if classic:  # the two lines the classic builder refuses, and nothing else
        dockerfile, count = re.subn(r"^(COPY (?:[^\n]*\\\n)*[^\n]*) \./tmp$", r"\1 ./tmp/", dockerfile, flags=re.M)
        dockerfile = dockerfile.replace("--chown=ma-user ", "--chown=ma-user:100 ")
        assert count == 1 and "--chown=ma-user:100" in dockerfile, "the recipe changed: adapt bench_layers.py"
    return write_recipe_context(work / ("recipe-classic" if classic else "recipe-buildkit"), dockerfile, fetched)


def build_recipe(directory: Path, reference: str, backend: Backend) -> float:
    if backend is Backend.DOCKER:
        command, env = ["docker", "build", "--no-cache", "-t", reference, str(directory)], {"DOCKER_BUILDKIT": "0"}
    else:
        cli = find_buildkit_cli()
        if cli.mode is BuildKitMode.BUILDX:
            command, env = [cli.path, "buildx", "build", "--load", "--no-cache", "-t", reference, str(directory)], {}
        else:
            command, env = [cli.path, "build", "--no-cache", "-t", reference, str(directory)], {"DOCKER_BUILDKIT": "1"}
    started = time.perf_counter()
    subprocess.run(command, env={**os.environ, **env}, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def seconds_of(command: list[str], *, cwd: Path = ROOT) -> float:
    # An installed tool runs from its compiled bytecode: a PYTHONDONTWRITEBYTECODE of this shell would make every
    # run compile the project's modules again.
    env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    os.sync()  # no run pays for the writes of the one before it
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def main() -> None:
    run = uuid.uuid4().hex[:8]
    client = docker.from_env()
    engine = connect()
    made: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="bench-layers-"))
    user = f"bench-{run}"
    password = "pw-" + secrets.token_urlsafe(18)
    registry = start_registry(user, password)
    results: dict[str, Any] = {"run": run, "cpus": os.cpu_count(), "goals": GOALS}
    try:
        base = f"bench-layers-base:{run}"
        made.append(base)
        run_base(client, base, run)
        fetched = fetched_entry(work, registry.host, f"cold-{run}", base)
        # 1. cold builds, side by side
        for backend in (Backend.BUILDKIT, Backend.DOCKER):
            classic = backend is Backend.DOCKER
            recipe = f"bench-recipe-{run}:{backend}"
            made.append(recipe)
            recipe_dir = recipe_context(work, fetched, classic=classic)
            ours_fetched = retagged(fetched, f"cold-{backend}-{run}")
            made.append(ours_fetched.image.reference)
            theirs, ours = [], []
            options = BuildOptions(backend=backend, work_dir=work / f"w-{backend}", no_cache=True)
            for attempt in range(PAIRS):
                for side in ("recipe", "ours") if attempt % 2 == 0 else ("ours", "recipe"):
                    log(f"{side}, {backend}, run {attempt + 1}")
                    os.sync()  # the previous build's writes reach the disk on its own clock, not on this one's
                    if side == "recipe":
                        theirs.append(build_recipe(recipe_dir, recipe, backend))
                    else:
                        result = build.build_image(ours_fetched, options, engine)
                        ours.append(result.duration)
            results[f"cold_{backend}"] = {"ours_s": [round(value, 1) for value in ours],
                                          "recipe_s": [round(value, 1) for value in theirs],
                                          "ratio": round(sum(ours) / sum(theirs), 2),
                                          "ours_size": result.size,
                                          "recipe_size": int(client.images.get(recipe).attrs["Size"])}
        # 2. push, rebuild --no-cache, push again
        env = {"MODELARTS_REGISTRY_USER": user, "MODELARTS_REGISTRY_PASSWORD": password}
        push = PushOptions(reports_dir=work / "reports", retries=2, backoff=0.1)
        now = dt.datetime.now(dt.timezone.utc)
        first_image = retagged(fetched, f"cold-{Backend.BUILDKIT}-{run}").image
        (first,) = publisher.push_images([first_image], push, engine=engine, env=env, now=now)
        again = retagged(fetched, f"rebuilt-{run}")
        made.append(again.image.reference)
        log("rebuild --no-cache")
        rebuilt = build.build_image(again, BuildOptions(backend=Backend.BUILDKIT, work_dir=work / "w-re",
                                                        no_cache=True), engine)
        (second,) = publisher.push_images([again.image], push, engine=engine, env=env, now=now)
        full, incremental = first.tags[0], second.tags[0]
        results["rebuild_push"] = {
            "full_push_bytes": full.bytes_sent, "full_push_layers": full.layers_sent,
            "rebuild_push_bytes": incremental.bytes_sent, "rebuild_push_layers": incremental.layers_sent,
            "layers_already_there": incremental.layers_there, "image_size": rebuilt.size,
            "share_of_full_push": round(incremental.bytes_sent / full.bytes_sent, 4),
            "share_of_image": round(incremental.bytes_sent / rebuilt.size, 4),
            "new_layers": [layer.step for layer in rebuilt.new_layers]}
        # 3. a second entry sharing everything but its stack
        wheel_dir = work / "six"
        engine_tests.pip(["download", "--no-deps", *engine_tests.PIP_TARGET, "-d", str(wheel_dir), "six==1.17.0"])
        stacked = retagged(fetched, f"stacked-{run}",
                           stack=tuple(engine_tests.stage_in_cache(sorted(wheel_dir.glob("*.whl")), work / "cache")))
        made.append(stacked.image.reference)
        other = build.build_image(stacked, BuildOptions(backend=Backend.BUILDKIT, work_dir=work / "w-st"), engine)
        (third,) = publisher.push_images([stacked.image], push, engine=engine, env=env, now=now)
        results["second_entry_push"] = {"bytes": third.tags[0].bytes_sent, "layers_sent": third.tags[0].layers_sent,
                                        "layers_there": third.tags[0].layers_there, "image_size": other.size,
                                        "share_of_image": round(third.tags[0].bytes_sent / other.size, 6)}
        # 4. verify against a bare docker run
        versions = work / "versions.yaml"
        image = first_image
        versions.write_text(json.dumps({"images": [{
            "id": "bench", "python": "3.11", "cuda": "cpu", "torch": "2.13.0", "base_image": base,
            "registry": image.registry, "organization": image.organization, "repository": image.repository,
            "tag": image.tag, "installer": {"url": image.installer.url}}]}), "utf-8")
        inv = [str(Path(sys.executable).parent / "inv"), "verify", "--versions", str(versions), "--device", "cpu",
               "--reports", str(work / "verify")]
        bare = ["docker", "run", "--rm", image.reference, "python", "-W", "ignore", "-c", "import torch"]
        seconds_of(bare)  # the page cache warm for both, and the project's bytecode written
        seconds_of(inv)
        verify_s, bare_s = [], []
        for _ in range(3):
            verify_s.append(seconds_of(inv))
            bare_s.append(seconds_of(bare))
        results["verify"] = {"inv_verify_s": round(statistics.median(verify_s), 2),
                             "docker_run_s": round(statistics.median(bare_s), 2),
                             "ratio": round(statistics.median(verify_s) / statistics.median(bare_s), 2),
                             "runs": {"inv_verify": [round(s, 2) for s in verify_s],
                                      "docker_run": [round(s, 2) for s in bare_s]}}
    finally:
        for reference in reversed(made):  # the run's base last
            engine_tests.remove_image(client, reference)
        stop_registry(registry.port)
        shutil.rmtree(work, ignore_errors=True)
    for backend in (Backend.BUILDKIT, Backend.DOCKER):
        cold = results[f"cold_{backend}"]
        print(f"cold_build_{backend}: {' / '.join(map(str, cold['ours_s']))} s vs the recipe's "
              f"{' / '.join(map(str, cold['recipe_s']))} s = {cold['ratio']} "
              f"(goal {GOALS['cold_build_ratio']}); size {size(cold['ours_size'])} vs {size(cold['recipe_size'])}")
    pushed = results["rebuild_push"]
    print(f"rebuild_push: {size(pushed['rebuild_push_bytes'])} of a {size(pushed['full_push_bytes'])} full push "
          f"= {pushed['share_of_full_push']} (goal {GOALS['rebuild_push_share']}); {pushed['rebuild_push_layers']} "
          f"layers sent, {pushed['layers_already_there']} already there")
    second = results["second_entry_push"]
    print(f"second_entry_push: {size(second['bytes'])} for a {size(second['image_size'])} image "
          f"({second['layers_sent']} layer sent, {second['layers_there']} already there)")
    verify = results["verify"]
    print(f"verify: {verify['inv_verify_s']} s vs docker run {verify['docker_run_s']} s = {verify['ratio']} "
          f"(goal {GOALS['verify_ratio']})")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "layers.json").write_text(json.dumps(results, indent=2) + "\n", "utf-8")


if __name__ == "__main__":
    main()
