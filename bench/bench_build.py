"""Build benchmark on the local Docker Engine: no-op rebuilds, context assembly, image size vs the recipe.

1. No-op rebuild (every step cached) through the real CLI, `inv build`, against a raw `docker build` of the
   same assembled context with the same target, build arguments, labels and tag, both warm, in the same run,
   for each backend (buildkit: `DOCKER_BUILDKIT=1 docker build`; docker: the classic builder). The entry is
   the engine tests' one (stand-in installer, CPU torch 2.13.0 for Python 3.11 and its dependency wheels),
   staged in a cache with a versions.lock that pins everything, so fetch finds it all and downloads nothing.
   Also timed: what the task does in this process, without interpreter start, imports and fetch (connect to the
   engine, check the base, `modelarts_images.build.builder.build_image()` through the pipeline's build step), and
   the pieces of the difference (Python start, `import tasks`, the BuildKit CLI probe, ...).
2. Context assembly for more than 2 GiB of wheels (sparse files named like torch and its CUDA dependencies):
   `modelarts_images.build.context.assemble()` timed, and every file checked to be a hardlink of its cache blob.
3. Image size against the original recipe's Dockerfile (../shared/reference/original-recipe.md, or
   $MODELARTS_IMAGES_RECIPE), adapted only in its FROM lines and in where its files come from, built from the
   same files in the same run with the same builder; `docker history` of both, compared step by step.

Needs a Docker Engine with the base image modelarts-test-base:bookworm (scripts/test-base-image.sh). Run with
`nox -s bench` or `.venv/bin/python bench/bench_build.py`; prints one `key: value` line per figure and writes
bench/results/build.json. Removes the images it made (tags, and the stage images its classic builds left);
BuildKit's cache stays, so reruns are warm for that backend and for the recipe; 3 to 6 minutes in all, most
of it the classic builder's packages stage, rebuilt each run since its stage images are removed afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: the project and its tests' helpers

from modelarts_images import pipeline  # noqa: E402
from modelarts_images.build import builder as building  # noqa: E402
from modelarts_images.build import context  # noqa: E402
from modelarts_images.config import versions as config  # noqa: E402
from modelarts_images.engine import cli, images  # noqa: E402
from modelarts_images.engine.adapter import DockerEngine, connect  # noqa: E402
from modelarts_images.engine.api import Backend  # noqa: E402
from modelarts_images.errors import BuildError  # noqa: E402
from modelarts_images.fetch import lockfile  # noqa: E402
from modelarts_images.model import Artifact, FetchedFile, FetchedImage, ImageSpec  # noqa: E402
from modelarts_images.options import BuildOptions  # noqa: E402
from modelarts_images.shared import redact  # noqa: E402
from modelarts_images.shared.files import link_or_copy  # noqa: E402
from modelarts_images.shared.text import size  # noqa: E402
from tests.support.engine_tier import (  # noqa: E402
    STAND_IN_INSTALLER,
    TEST_BASE,
    TORCH_VERSION,
    download_closure,
    find_torch_wheel,
    image_spec,
    stage_in_cache,
)

RECIPE = Path(os.environ.get("MODELARTS_IMAGES_RECIPE", ROOT.parent / "shared" / "reference" / "original-recipe.md"))
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").is_file() else "docker"  # a client < 23: DOCKER_BUILDKIT=1
REPEATS = int(os.environ.get("BENCH_BUILD_REPEATS", "5"))
BACKENDS = (Backend.BUILDKIT, Backend.DOCKER)
URL_BASE = "https://example.invalid/bench/"
ASSEMBLY_GIB = 2.25  # of wheels in the assembly benchmark
GOALS = {"noop_ratio": 1.2, "assembly_s": 1.0, "size_ratio": 1.0}


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def run(command: Sequence[str], *, env: dict[str, str] | None = None, what: str) -> str:
    """Run a command from the project root; its output on success, a RuntimeError with its tail otherwise."""
    result = subprocess.run(list(command), cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True,
                            text=True, errors="replace", check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        raise RuntimeError(f"{what} failed (exit {result.returncode}):\n{tail}")
    return result.stdout


def timed_run(command: Sequence[str], *, env: dict[str, str] | None = None, what: str) -> tuple[float, str]:
    started = time.perf_counter()
    output = run(command, env=env, what=what)
    return time.perf_counter() - started, output


# --------------------------------------------------------------------------------------------------------------
# 1. No-op rebuild: `inv build` vs raw `docker build`


def write_entry(work: Path, run_id: str, torch_wheel: Path, closure: list[Path]) -> tuple[Path, Path, FetchedImage]:
    """A versions file, a versions.lock pinning every artifact, a cache holding them and an invoke config."""
    cache = work / "cache"
    (installer,) = stage_in_cache([STAND_IN_INSTALLER], cache, url_base=URL_BASE)
    (wheel,) = stage_in_cache([torch_wheel], cache, url_base=URL_BASE)
    deps = stage_in_cache(closure, cache, url_base=URL_BASE)
    versions = work / "versions.yaml"
    versions.write_text(yaml.safe_dump({"images": [{
        "id": f"bench-build-{run_id}", "python": "3.11", "cuda": "cpu", "torch": TORCH_VERSION,
        "tag": f"bench-{run_id}", "registry": "localhost:5999", "organization": "bench",
        "repository": "modelarts-images-bench", "base_image": TEST_BASE,
        "installer": {"url": installer.url, "sha256": installer.sha256},
        "wheels": [{"url": wheel.url, "sha256": wheel.sha256}],
    }]}, sort_keys=False), "utf-8")
    invoke_config = work / "invoke-bench.yaml"
    invoke_config.write_text(yaml.safe_dump({"modelarts": {"cache_dir": str(cache)}}), "utf-8")
    # The entry as the tasks load it (pip_index and apt_mirror from the project's invoke.yaml).
    project = yaml.safe_load((ROOT / "invoke.yaml").read_text("utf-8"))["modelarts"]
    fallbacks = {key: project[key] for key in ("pip_index", "apt_mirror") if project.get(key)}
    (spec,) = config.load_versions(versions, fallbacks=fallbacks).images

    def pinned(item: FetchedFile) -> Artifact:
        return Artifact(url=item.url, sha256=item.sha256)

    lockfile.write(versions.with_suffix(".lock"), {spec.id: lockfile.LockedImage(
        inputs=lockfile.inputs_of(spec), installer=pinned(installer), wheels=(pinned(wheel),),
        closure=tuple(pinned(dep) for dep in deps))})
    fetched = FetchedImage(image=spec, installer=installer, wheels=(wheel,), closure=tuple(deps))
    return versions, invoke_config, fetched


def invoke_build(versions: Path, invoke_config: Path, backend: Backend) -> list[str]:
    return [sys.executable, "-m", "invoke", "-f", str(invoke_config), "build", "--versions", str(versions),
            "--backend", backend.value]


def build_options(backend: Backend) -> BuildOptions:
    """What `inv build --backend BACKEND` builds with here (invoke.yaml sets no base prefix)."""
    return BuildOptions(backend=backend, work_dir=ROOT / "build")


def raw_build(fetched: FetchedImage, context_dir: Path, backend: Backend) -> tuple[list[str], dict[str, str]]:
    """`docker build` of the assembled context with what `inv build` passes: target, arguments, labels, tag."""
    inputs = building.build_inputs(fetched, build_options(backend))
    command = [DOCKER, "build", "--target", inputs.target, "-t", inputs.reference]
    # the keys of the steps fed by the file server (a no-op build: none of them runs)
    served = context.bundle_digests(fetched, context_dir, building.served_steps(backend))
    for name, value in (*inputs.build_args, *served):
        command += ["--build-arg", f"{name}={value}"]
    for name, value in inputs.labels:
        command += ["--label", f"{name}={value}"]
    return [*command, str(context_dir)], {"DOCKER_BUILDKIT": "1" if backend == "buildkit" else "0"}


def image_id(client: Any, reference: str) -> str:
    return str(client.api.inspect_image(reference)["Id"])


def median_of(action: Callable[[], object], times: int = 3) -> float:
    runs = []
    for _ in range(times):
        started = time.perf_counter()
        action()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def overhead(engine: DockerEngine, fetched: FetchedImage, context_dir: Path) -> dict[str, float]:
    """Where the time of a no-op `inv build` goes besides the docker build itself (medians of 3, seconds)."""
    inputs = building.build_inputs(fetched, build_options(Backend.BUILDKIT))

    def python(code: str) -> Callable[[], object]:
        return lambda: run([sys.executable, "-c", code], what=f"python -c {code!r}")

    return {
        "python_startup_s": round(median_of(python("pass")), 3),
        "python_import_tasks_s": round(median_of(python("import tasks")), 3),  # the CLI imports tasks.py
        "find_buildkit_cli_s": round(median_of(cli.find_buildkit_cli), 3),
        "base_image_check_s": round(median_of(lambda: engine.base_image(inputs.base_image)), 3),
        "assemble_context_s": round(median_of(lambda: context.assemble(fetched, context_dir.parent)), 3),
        "image_summary_s": round(median_of(lambda: engine.summary(inputs.reference,
                                                                  base_image=inputs.base_image)), 3),
    }


def build_in_process(fetched: FetchedImage, backend: Backend) -> str:
    """What `inv build` does after its imports, fetch aside: connect, check the base, build; the image id."""
    engine = pipeline.connect(BuildError)
    try:
        pipeline.check_bases_step([fetched.image], build_options(backend), engine)
        return pipeline.build_step(fetched, build_options(backend), engine).image_id
    finally:
        if isinstance(engine, DockerEngine):
            engine.close()


def noop_rebuilds(engine: DockerEngine, versions: Path, invoke_config: Path, fetched: FetchedImage,
                  made: set[str]) -> dict[str, dict[str, Any]]:
    client: Any = engine.client  # the SDK's raw API, as in the rest of this file
    reference = fetched.image.reference
    context_dir = context.context_dir(ROOT / "build", fetched.image.id)  # where `inv build` assembles it
    results: dict[str, dict[str, Any]] = {}
    for backend in BACKENDS:
        cli = invoke_build(versions, invoke_config, backend)
        log(f"{backend}: first build (warms the engine's cache; cold only where nothing was cached before)")
        first, _ = timed_run(cli, what=f"inv build --backend {backend}")
        built = image_id(client, reference)
        made.add(built)
        raw, env = raw_build(fetched, context_dir, backend)
        run(raw, env=env, what=f"raw docker build ({backend})")  # its own warm-up (context transfer, client)
        raw_built = image_id(client, reference)
        made.add(raw_built)
        invoke_times: list[float] = []
        library_times: list[float] = []
        raw_times: list[float] = []
        fetch_lines: list[str] = []
        invoke_ids: set[str] = set()
        raw_ids: set[str] = set()
        for _ in range(REPEATS):  # interleaved, so drift in the engine's load hits all three alike
            seconds, output = timed_run(cli, what=f"inv build --backend {backend}")
            invoke_times.append(seconds)
            fetch_lines += [line for line in output.splitlines() if line.startswith("fetched ")]
            invoke_ids.add(image_id(client, reference))
            started = time.perf_counter()
            library_id = build_in_process(fetched, backend)
            library_times.append(time.perf_counter() - started)
            invoke_ids.add(library_id)
            seconds, _ = timed_run(raw, env=env, what=f"raw docker build ({backend})")
            raw_times.append(seconds)
            raw_ids.add(image_id(client, reference))
        made.update(invoke_ids | raw_ids)
        inv, library, raw_s = (statistics.median(invoke_times), statistics.median(library_times),
                               statistics.median(raw_times))
        results[backend] = {
            "first_build_s": round(first, 2),
            "invoke_build_s": round(inv, 3),
            "invoke_build_runs_s": [round(t, 3) for t in invoke_times],
            "build_image_s": round(library, 3),  # connect, check the base, build_image(): in this process
            "build_image_runs_s": [round(t, 3) for t in library_times],
            "raw_docker_build_s": round(raw_s, 3),
            "raw_docker_build_runs_s": [round(t, 3) for t in raw_times],
            "ratio": round(inv / raw_s, 3),
            "build_image_ratio": round(library / raw_s, 3),
            "invoke_overhead_s": round(inv - raw_s, 3),
            # every rebuild gave the image of the first one: nothing was rebuilt
            "invoke_rebuilt_nothing": invoke_ids == {built},
            "raw_rebuilt_nothing": raw_ids == {raw_built},
            # the same image from both paths (the classic builder's cache also depends on how the tar is made)
            "raw_same_image_as_invoke": raw_built == built,
            "fetch_summary": sorted(set(fetch_lines)),
            "image_id": built,
            "size": int(client.api.inspect_image(built)["Size"]),
            "raw_command": redact.command([f"DOCKER_BUILDKIT={env['DOCKER_BUILDKIT']}", *raw]),
        }
    results["overhead"] = overhead(engine, fetched, context_dir)
    return results


# --------------------------------------------------------------------------------------------------------------
# 2. Context assembly of more than 2 GiB of wheels


def assembly(work: Path, spec: ImageSpec) -> dict[str, Any]:
    """Sparse files (hardlinking does not read content) named like a CUDA torch and its dependency wheels."""
    cache = work / "assembly-cache" / "blobs" / "sha256"
    cache.mkdir(parents=True)
    mib = 1 << 20
    wheels = {"torch-2.5.1+cu121-cp311-cp311-linux_x86_64.whl": 780 * mib,
              "torchvision-0.20.1+cu121-cp311-cp311-linux_x86_64.whl": 7 * mib,
              "torchaudio-2.5.1+cu121-cp311-cp311-linux_x86_64.whl": 3 * mib}
    deps = {"nvidia_cudnn_cu12-9.1.0.70-py3-none-manylinux2014_x86_64.whl": 664 * mib,
            "nvidia_cublas_cu12-12.1.3.1-py3-none-manylinux1_x86_64.whl": 410 * mib,
            "nvidia_cusparse_cu12-12.1.0.106-py3-none-manylinux1_x86_64.whl": 196 * mib,
            "nvidia_nccl_cu12-2.21.5-py3-none-manylinux2014_x86_64.whl": 188 * mib,
            "nvidia_cufft_cu12-11.0.2.54-py3-none-manylinux1_x86_64.whl": 121 * mib,
            "nvidia_cusolver_cu12-11.4.5.107-py3-none-manylinux1_x86_64.whl": 124 * mib,
            "triton-3.1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl": 209 * mib,
            "nvidia_curand_cu12-10.3.2.106-py3-none-manylinux1_x86_64.whl": 56 * mib,
            "nvidia_cuda_nvrtc_cu12-12.1.105-py3-none-manylinux1_x86_64.whl": 24 * mib,
            "sympy-1.13.1-py3-none-any.whl": 6 * mib,
            "networkx-3.4.2-py3-none-any.whl": 2 * mib,
            **{f"bench_dep{n}-1.0-py3-none-any.whl": 64 * 1024 for n in range(40)}}

    def staged(name: str, size: int) -> FetchedFile:
        digest = hashlib.sha256(name.encode()).hexdigest()
        blob = cache / digest
        with blob.open("wb") as stream:
            stream.truncate(size)
        return FetchedFile(filename=name, path=blob, url=URL_BASE + name, sha256=digest)

    fetched = FetchedImage(image=spec, installer=staged("Miniconda3-py311_24.7.1-0-Linux-x86_64.sh", 141 * mib),
                           wheels=tuple(staged(n, s) for n, s in wheels.items()),
                           closure=tuple(staged(n, s) for n, s in deps.items()))
    files = [fetched.installer, *fetched.wheels, *(fetched.closure or ())]
    total = sum(item.path.stat().st_size for item in files)
    work_dir = work / "assembly-build"
    times = []
    target = work_dir
    for _ in range(REPEATS):  # the first into an empty work dir, then each replacing the previous context
        started = time.perf_counter()
        target = context.assemble(fetched, work_dir)
        times.append(time.perf_counter() - started)
    placed = {path.name: path for path in target.rglob("*") if path.is_file()}
    linked = all(placed[item.filename].stat().st_ino == item.path.stat().st_ino for item in files)
    return {
        "bytes": total,
        "files": len(files),
        "assembly_first_s": round(times[0], 4),
        "assembly_s": round(statistics.median(times), 4),
        "assembly_max_s": round(max(times), 4),
        "hardlinked": linked,
        "links_of_torch_blob": fetched.wheels[0].path.stat().st_nlink,
    }


# --------------------------------------------------------------------------------------------------------------
# 3. Image size vs the original recipe


def recipe_dockerfile(markdown: str) -> str:
    match = re.search(r"```dockerfile\n(.*?)```", markdown, re.DOTALL)
    if match is None:
        raise RuntimeError(f"{RECIPE}: no ```dockerfile block")
    return match.group(1)


def _instructions(text: str, keyword: str, needle: str) -> list[re.Match[str]]:
    """Every `keyword` instruction (with its continuation lines) whose text contains `needle`."""
    found = re.finditer(rf"^{keyword} (?:[^\n]*\\\n)*[^\n]*$", text, re.MULTILINE)
    return [match for match in found if needle in match.group(0)]


def adapt_recipe(original: str, *, installer: str, wheels: Sequence[str], base: str) -> tuple[str, list[str]]:
    """The recipe with only its FROM lines and the files it copies and installs changed; and what changed.

    The dependency wheels lie in deps/ of the recipe's context and are copied into /tmp with the rest (a
    directory source copies its content), so pip installs --no-index from there: containers here reach no index.
    """
    changes: list[str] = []

    def replace(text: str, pattern: str, new: str, *, flags: int = 0, expected: int = 1) -> str:
        result, count = re.subn(pattern, new, text, flags=flags)
        if count != expected:
            raise RuntimeError(f"recipe: expected {expected} match(es) of {pattern!r}, found {count}")
        return result

    text = replace(original, r"^FROM \S+", f"FROM {base}", flags=re.MULTILINE, expected=2)
    changes.append(f"FROM nvidia/cuda:10.2-runtime-ubuntu18.04 (both stages) -> FROM {base}")
    (copy,) = _instructions(text, "COPY", "Miniconda3")
    # The destination stays `./tmp`: BuildKit copies several sources into the existing /tmp; the classic builder
    # refuses several sources without a trailing '/' ("the destination must be a directory and end with a /").
    new_copy = f"COPY {installer} {' '.join(wheels)} deps/ {copy.group(0).split()[-1]}"
    text = text[:copy.start()] + new_copy + text[copy.end():]
    changes.append(f"{' '.join(copy.group(0).replace(chr(92), ' ').split())} -> {new_copy}")
    text = replace(text, r"Miniconda3-[\w.-]+\.sh", installer)
    changes.append(f"RUN bash /tmp/Miniconda3-py37_4.12.0-Linux-x86_64.sh ... -> RUN bash /tmp/{installer} ...")
    (pip,) = _instructions(text, "RUN", "pip install")
    paths = re.findall(r"/tmp/\S+\.whl", pip.group(0))
    new_pip = re.sub(r"(?:\s*\\\n\s*|\s+)/tmp/\S+\.whl", "", pip.group(0))
    new_pip = replace(new_pip, r"--no-cache-dir", "--no-cache-dir --no-index --find-links /tmp \\\n    "
                      + " ".join(f"/tmp/{name}" for name in wheels))
    text = text[:pip.start()] + new_pip + text[pip.end():]
    changes.append(f"pip install --no-cache-dir {' '.join(paths)} -> pip install --no-cache-dir --no-index "
                   f"--find-links /tmp {' '.join(f'/tmp/{name}' for name in wheels)}")
    return text, changes


def write_recipe_context(directory: Path, dockerfile: str, fetched: FetchedImage) -> Path:
    """The recipe's build context: its Dockerfile, pip.conf, and the same cache files as ours (hard links)."""
    (directory / "deps").mkdir(parents=True)
    (directory / "Dockerfile").write_text(dockerfile, "utf-8")
    (directory / "pip.conf").write_text(context.render_pip_conf(fetched.image.pip_index), "utf-8")
    for item in (fetched.installer, *fetched.wheels):
        link_or_copy(item.path, directory / item.filename)
    for item in fetched.closure or ():
        link_or_copy(item.path, directory / "deps" / item.filename)
    return directory


def build_recipe(work: Path, fetched: FetchedImage, reference: str) -> tuple[float, list[str]]:
    """The recipe's context from the same cache files (hardlinks), built with the same BuildKit CLI."""
    installer = fetched.installer.filename
    dockerfile, changes = adapt_recipe(recipe_dockerfile(RECIPE.read_text("utf-8")), installer=installer,
                                       wheels=[wheel.filename for wheel in fetched.wheels], base=TEST_BASE)
    recipe_dir = write_recipe_context(work / "recipe-context", dockerfile, fetched)
    command = [DOCKER, "build", "-t", reference, str(recipe_dir)]
    seconds, _ = timed_run(command, env={"DOCKER_BUILDKIT": "1"}, what="build of the recipe's Dockerfile")
    return seconds, changes


def role(step: str) -> str:
    if "apt-get" in step:
        return "apt: vim and curl"
    if "useradd" in step:
        return "user ma-user"
    if step.startswith("COPY") and "miniconda3" in step:
        return "conda prefix from the builder"
    return "metadata (ENV, USER, WORKDIR, LABEL)"


def layers(client: Any, reference: str) -> list[dict[str, Any]]:
    """`docker history`, oldest first, each entry with its step, size and role; the base's entries marked."""
    history = list(reversed(client.api.history(reference)))
    base = len(client.api.history(TEST_BASE))
    rows = []
    for index, entry in enumerate(history):
        step = images.step_of(str(entry.get("CreatedBy") or "")) or str(entry.get("Comment") or "")
        rows.append({"step": " ".join(step.split())[:200], "size": int(entry.get("Size") or 0),
                     "role": "base image" if index < base else role(step)})
    return rows


PROBE = r"""
for d in /var/lib/apt/lists /var/cache/apt /var/cache/debconf /var/log /home/ma-user/miniconda3 /root/.cache; do
  printf 'du %s %s\n' "$d" "$(du -sb "$d" 2>/dev/null | cut -f1)"
done
dpkg-query -W -f 'pkg ${Package} ${Installed-Size}\n'
"""


def probe(client: Any, reference: str) -> tuple[dict[str, int], dict[str, int]]:
    """Directory sizes and installed packages (KiB) in a container of the image, as root, with a sane PATH."""
    output = client.containers.run(reference, ["/bin/sh", "-c", PROBE], user="root", remove=True,
                                   environment={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}).decode()
    dirs, packages = {}, {}
    for line in output.splitlines():
        parts = line.split()
        if parts[:1] == ["du"] and len(parts) == 3:
            dirs[parts[1]] = int(parts[2])
        elif parts[:1] == ["pkg"] and len(parts) >= 2:
            packages[parts[1]] = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 0
    return dirs, packages


def compare_sizes(client: Any, ours: str, recipe: str) -> dict[str, Any]:
    ours_layers, recipe_layers = layers(client, ours), layers(client, recipe)
    roles = dict.fromkeys(row["role"] for row in [*ours_layers, *recipe_layers])
    by_role = []
    for name in roles:
        mine = sum(row["size"] for row in ours_layers if row["role"] == name)
        theirs = sum(row["size"] for row in recipe_layers if row["role"] == name)
        by_role.append({"role": name, "ours": mine, "recipe": theirs, "difference": mine - theirs})
    ours_dirs, ours_packages = probe(client, ours)
    recipe_dirs, recipe_packages = probe(client, recipe)
    only_recipe = {name: kib for name, kib in recipe_packages.items() if name not in ours_packages}
    only_ours = {name: kib for name, kib in ours_packages.items() if name not in recipe_packages}
    size_ours = int(client.api.inspect_image(ours)["Size"])
    size_recipe = int(client.api.inspect_image(recipe)["Size"])
    return {
        "size": size_ours,
        "recipe_size": size_recipe,
        "size_ratio": round(size_ours / size_recipe, 4),
        "by_role": by_role,
        "layers_ours": ours_layers,
        "layers_recipe": recipe_layers,
        "directories_ours": ours_dirs,
        "directories_recipe": recipe_dirs,
        "packages_only_in_recipe_kib": dict(sorted(only_recipe.items())),
        "packages_only_in_ours_kib": dict(sorted(only_ours.items())),
    }


# --------------------------------------------------------------------------------------------------------------


def image_ids(client: Any) -> set[str]:
    return {str(image["Id"]) for image in client.api.images(all=True)}


def stage_images(client: Any, before: set[str], since: float) -> list[str]:
    """Untagged images this run's classic builds left: builder stages (conda, packages) of our Dockerfile.

    The classic builder keeps each stage as an image; only the final stage hangs under the tag.
    """
    found = []
    for image in client.api.images(filters={"dangling": True}):
        if image["Id"] in before or int(image.get("Created") or 0) < since:
            continue
        steps = " ".join(str(entry.get("CreatedBy") or "") for entry in client.api.history(image["Id"]))
        if "/home/ma-user/miniconda3" in steps:
            found.append(str(image["Id"]))
    return found


@contextlib.contextmanager
def cleanup(client: Any, work: Path, build_dir: Path, tags: Sequence[str], made: set[str]) -> Iterator[None]:
    before, since = image_ids(client), int(time.time()) - 1
    try:
        yield
    finally:
        for reference in tags:
            with contextlib.suppress(Exception):  # never built, or already gone
                client.images.remove(reference)
        for image in [*made, *stage_images(client, before, since)]:  # never forced: in use means not ours
            with contextlib.suppress(Exception):
                client.images.remove(image)
        shutil.rmtree(build_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    engine = connect()
    client: Any = engine.client
    client.images.get(TEST_BASE)  # fails clearly when the base image is missing
    run_id = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="modelarts-bench-build-"))
    recipe_tag = f"modelarts-bench-recipe:{run_id}"
    made: set[str] = set()
    started = time.perf_counter()
    log("getting the test entry's wheels (torch and its closure, from the host's pip)")
    torch_wheel = find_torch_wheel(work / "download")
    closure = download_closure([torch_wheel], work / "closure")
    versions, invoke_config, fetched = write_entry(work, run_id, torch_wheel, closure)
    build_dir = context.context_dir(ROOT / "build", fetched.image.id)
    results: dict[str, Any] = {"run_id": run_id, "docker_cli": DOCKER, "repeats": REPEATS}
    with cleanup(client, work, build_dir, [fetched.image.reference, recipe_tag], made):
        noop = noop_rebuilds(engine, versions, invoke_config, fetched, made)
        for backend, figures in noop.items():
            results[f"noop_{backend}"] = figures
        log("context assembly")
        results["assembly"] = assembly(work, image_spec(tag="assembly", image_id=f"bench-assembly-{run_id}"))
        if RECIPE.is_file():
            log(f"building the recipe's Dockerfile from {RECIPE}")
            # The buildkit image is ours (the default backend): tag it again, the docker backend built last.
            client.api.tag(noop["buildkit"]["image_id"], fetched.image.reference)
            seconds, changes = build_recipe(work, fetched, recipe_tag)
            made.add(image_id(client, recipe_tag))
            results["recipe"] = {"source": str(RECIPE), "build_s": round(seconds, 1), "adaptations": changes,
                                 **compare_sizes(client, fetched.image.reference, recipe_tag)}
        else:
            results["recipe"] = {"skipped": f"{RECIPE} is missing (set MODELARTS_IMAGES_RECIPE)"}
    engine.close()
    results["total_s"] = round(time.perf_counter() - started, 1)
    report(results)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "build.json").write_text(json.dumps(results, indent=2) + "\n", "utf-8")


def report(results: dict[str, Any]) -> None:
    for backend in BACKENDS:
        figures = results[f"noop_{backend}"]
        print(f"noop_{backend}_invoke_build_s: {figures['invoke_build_s']}")
        print(f"noop_{backend}_raw_docker_build_s: {figures['raw_docker_build_s']}")
        print(f"noop_{backend}_ratio: {figures['ratio']} (goal <= {GOALS['noop_ratio']})")
        print(f"noop_{backend}_build_image_s: {figures['build_image_s']} (in process, ratio "
              f"{figures['build_image_ratio']})")
        print(f"noop_{backend}_overhead_s: {figures['invoke_overhead_s']}")
        print(f"noop_{backend}_rebuilt_nothing: inv {figures['invoke_rebuilt_nothing']}, raw "
              f"{figures['raw_rebuilt_nothing']}; same image both ways: {figures['raw_same_image_as_invoke']}")
    for key, value in results["noop_overhead"].items():
        print(f"noop_overhead_{key}: {value}")
    figures = results["assembly"]
    print(f"assembly_bytes: {figures['bytes']} ({figures['files']} files)")
    print(f"assembly_s: {figures['assembly_s']} (first {figures['assembly_first_s']}, max "
          f"{figures['assembly_max_s']}; goal <= {GOALS['assembly_s']})")
    print(f"assembly_hardlinked: {figures['hardlinked']}")
    recipe = results["recipe"]
    if "skipped" in recipe:
        print(f"recipe: skipped, {recipe['skipped']}")
    else:
        print(f"image_size: {recipe['size']} ({size(recipe['size'])})")
        print(f"recipe_image_size: {recipe['recipe_size']} ({size(recipe['recipe_size'])})")
        print(f"size_ratio: {recipe['size_ratio']} (goal <= {GOALS['size_ratio']})")
        for row in recipe["by_role"]:
            print(f"layers[{row['role']}]: ours {size(row['ours'])}, recipe {size(row['recipe'])}, "
                  f"difference {size(row['difference'])}")
        extra = recipe["packages_only_in_recipe_kib"]
        print(f"packages_only_in_recipe: {len(extra)} ({sum(extra.values()) / 1024:.1f} MiB installed): "
              f"{' '.join(extra)}")
        print(f"packages_only_in_ours: {' '.join(recipe['packages_only_in_ours_kib']) or '(none)'}")
        for directory in ("/var/lib/apt/lists", "/var/cache/apt", "/var/log", "/home/ma-user/miniconda3"):
            print(f"du[{directory}]: ours {recipe['directories_ours'].get(directory, 0)}, recipe "
                  f"{recipe['directories_recipe'].get(directory, 0)}")
    print(f"total_s: {results['total_s']}")


if __name__ == "__main__":
    main()
