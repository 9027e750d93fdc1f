"""Stack pin change benchmark: after changing one pin in an entry's `packages`, what the rebuild costs and what
the next push uploads, as a share of a cold build and of a full push. Goal: at most 10 % of each.

1. An entry like tests/engine/test_stack.py's (stand-in installer, the CPU torch 2.13.0 wheel served from a
   loopback HTTP server, base modelarts-test-base:bookworm plus a file naming the run, so no earlier build's cache
   records can stand in for this run's: see run_base()) with a stack of wheels from the host's configured index
   (PACKAGES), no build_from_source, backend buildkit, pushed to a registry on 127.0.0.1:<free port>.
2. Cold: `inv fetch` into a fresh cache (not timed as build), then `inv build --no-cache` timed.
3. `inv push` to a fresh registry (scripts/registry-up.sh, htpasswd auth, MODELARTS_REGISTRY_USER/PASSWORD):
   the full push is every layer of the image (their compressed sizes in the registry's manifest).
4. One pin changed (CHANGE), `inv fetch` again, `inv build` timed with the engine's cache (as a user would),
   pushed under a new tag: the bytes uploaded are the compressed sizes of the new manifest's layers the registry
   did not hold before (the first push's blobs). Cross-checked with the blob uploads in the registry's own log.
5. `key: value` lines on stdout, bench/results/stack.json; every image (the run's base too) and the registry
   removed afterwards. BuildKit's cache stays, as in bench_build.py: its records of this run's steps are never
   used again (the run's base is unique) and go with the engine's cache garbage collection.

Run with `nox -s bench -- stack` or `PYTHONPATH=. .venv/bin/python bench/bench_stack.py`; needs the Docker Engine,
the test base image (scripts/test-base-image.sh), docker-registry and htpasswd; a few minutes, most of it the
cold build.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import docker
import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: the project and its tests' helpers

from modelarts_images.build import context  # noqa: E402
from modelarts_images.shared.text import size  # noqa: E402
from tests.support.engine_tier import (  # noqa: E402
    STAND_IN_INSTALLER,
    TEST_BASE,
    TORCH_VERSION,
    find_torch_wheel,
    run_base,
)
from tests.support.http_server import FileServer, serve  # noqa: E402
from tests.support.registry import RunningRegistry, start_registry, stop_registry  # noqa: E402

PACKAGES = ["einops==0.8.2", "six==1.17.0"]
CHANGE = ("six==1.17.0", "six==1.16.0")  # the one pin changed between the cold build and the rebuild
BACKEND = "buildkit"
IMAGE_ID = "bench-stack"
ORGANIZATION = "bench"
REPOSITORY = "modelarts-images-bench"
GOALS = {"rebuild_ratio": 0.10, "push_ratio": 0.10}
MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json, "
                  "application/vnd.oci.image.manifest.v1+json")
TIMEOUT_S = 1800


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------------
# The entry and the tasks


def entry(server: FileServer, torch_wheel: Path, *, base: str, registry: str, tag: str,
          packages: Sequence[str]) -> dict[str, Any]:
    """The versions.yaml entry: test_stack.py's, with a stack of `packages` only."""
    installer, wheel = STAND_IN_INSTALLER.read_bytes(), torch_wheel.read_bytes()
    return {
        "id": IMAGE_ID, "python": "3.11", "cuda": "cpu", "torch": TORCH_VERSION, "tag": tag,
        "registry": registry, "organization": ORGANIZATION, "repository": REPOSITORY, "base_image": base,
        "installer": {"url": server.add("/files/stand-in-installer.sh", installer),
                      "sha256": hashlib.sha256(installer).hexdigest()},
        "wheels": [{"url": server.add("/files/" + torch_wheel.name.replace("+", "%2B"), wheel),
                    "sha256": hashlib.sha256(wheel).hexdigest()}],
        "packages": list(packages),
    }


@dataclass(frozen=True)
class Invoke:
    """`inv -f CONFIG ...` on the bench's versions file, from the project root; each run's output kept in logs/."""

    config: Path
    versions: Path
    logs: Path

    def __call__(self, name: str, args: Sequence[str], env: Mapping[str, str] | None = None) -> tuple[float, str]:
        """Seconds the command took and its output (stdout and stderr); a RuntimeError with its tail on failure."""
        command = [sys.executable, "-m", "invoke", "-f", str(self.config), *args]
        full_env = {**os.environ, "INVOKE_MODELARTS_VERSIONS": str(self.versions), **(env or {})}
        started = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, env=full_env, capture_output=True, text=True, errors="replace",
                                timeout=TIMEOUT_S, check=False)
        seconds = time.perf_counter() - started
        output = result.stdout + result.stderr
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.logs / f"{name}.log").write_text(output, "utf-8")
        if result.returncode != 0:
            tail = "\n".join(output.splitlines()[-40:])
            raise RuntimeError(f"inv {' '.join(args)} ({name}) failed (exit {result.returncode}):\n{tail}")
        log(f"{name}: {seconds:.1f} s")
        return seconds, output


_STEP = re.compile(r"^#(\d+) (\[.+)$")
_DONE = re.compile(r"^#(\d+) (DONE ([0-9.]+)s|CACHED)$")


def build_steps(output: str) -> list[dict[str, Any]]:
    """The Dockerfile's steps from BuildKit's plain progress: name and seconds, or cached."""
    names: dict[str, str] = {}
    steps: list[dict[str, Any]] = []
    for line in output.splitlines():
        named = _STEP.match(line.strip())
        if named and named.group(1) not in names:
            names[named.group(1)] = " ".join(named.group(2).split())[:120]
            continue
        done = _DONE.match(line.strip())
        if done and done.group(1) in names:
            seconds = float(done.group(3)) if done.group(3) else None
            steps.append({"step": names[done.group(1)], "cached": seconds is None,
                          **({"seconds": seconds} if seconds is not None else {})})
    return steps


def slowest(steps: Sequence[Mapping[str, Any]], count: int = 5) -> list[str]:
    timed = sorted((step for step in steps if not step["cached"]), key=lambda step: -float(step["seconds"]))
    return [f"{step['seconds']:.1f}s {step['step']}" for step in timed[:count]]


# --------------------------------------------------------------------------------------------------------------
# The registry: manifests over its HTTP API, blob uploads from its log


@dataclass(frozen=True)
class Registry:
    running: RunningRegistry

    @property
    def base(self) -> str:
        return f"http://{self.running.host}/v2/"

    def get(self, path: str, *, accept: str | None = None) -> requests.Response:
        response = requests.get(self.base + path, auth=(self.running.user, self.running.password),
                                headers={"Accept": accept} if accept else {}, timeout=30)
        response.raise_for_status()
        return response

    def catalog(self) -> list[str]:
        return [str(name) for name in self.get("_catalog").json().get("repositories") or []]

    def manifest(self, tag: str) -> dict[str, Any]:
        return dict(self.get(f"{ORGANIZATION}/{REPOSITORY}/manifests/{tag}", accept=MANIFEST_TYPES).json())

    def config(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self.get(f"{ORGANIZATION}/{REPOSITORY}/blobs/{manifest['config']['digest']}").json())

    def log_file(self) -> Path | None:
        """scripts/registry-up.sh's state file names the registry's directory, where its log is."""
        with contextlib.suppress(OSError, ValueError):
            _, directory = Path(f"/tmp/registry-{self.running.port}.state").read_text("utf-8").split()
            return Path(directory) / "registry.log"
        return None

    def log_lines(self) -> list[str]:
        path = self.log_file()
        if path is None or not path.is_file():
            return []
        return path.read_text("utf-8", errors="replace").splitlines()


_UPLOAD = re.compile(r'http\.request\.method=PUT .*http\.request\.uri="[^"]*/blobs/uploads/[^"]*[?&]digest='
                     r'(sha256(?:%3A|:)[0-9a-f]{64})')


def uploaded_digests(lines: Sequence[str]) -> set[str]:
    """Blobs whose upload the registry completed (the closing PUT ...?digest=, answered 201)."""
    found = set()
    for line in lines:
        match = _UPLOAD.search(line)
        if match and "http.response.status=201" in line:
            found.add(unquote(match.group(1)))
    return found


# --------------------------------------------------------------------------------------------------------------
# Layers


def layer_rows(manifest: Mapping[str, Any], config: Mapping[str, Any], *, base_layers: int,
               held: set[str]) -> list[dict[str, Any]]:
    """The manifest's layers, oldest first, each with the step that made it (from the config's history), its
    compressed size, whether it is the base image's, and whether the registry lacked it (`changed`)."""
    steps = [str(item.get("created_by") or "") for item in config.get("history", []) if not item.get("empty_layer")]
    rows = []
    for index, layer in enumerate(manifest["layers"]):
        step = steps[index] if index < len(steps) else ""
        step = " ".join(re.sub(r"^/bin/sh -c #\(nop\)\s*", "", step).split())
        row: dict[str, Any] = {"index": index, "size": int(layer["size"]), "digest": str(layer["digest"]),
                               "base": index < base_layers, "changed": str(layer["digest"]) not in held}
        rows.append({**row, "role": role(step, base=row["base"]), "step": step[:160]})
    return rows


def role(step: str, *, base: bool) -> str:
    if base:
        return "base image"
    if "/opt/stack" in step:
        return "stack (COPY --from=stack /opt/stack)"
    if "miniconda3" in step or "CONDA_PREFIX" in step:
        return "conda prefix with torch (COPY --from=packages)"
    if "useradd" in step:
        return "user ma-user"
    if "apt-install" in step:
        return "apt packages"
    return "other"


# --------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def cleanup(client: Any, references: list[str], made: set[str], registry: list[RunningRegistry],
            paths: Sequence[Path]) -> Iterator[None]:
    try:
        yield
    finally:
        for reference in [*references, *made]:
            with contextlib.suppress(Exception):  # never built, or gone already
                client.images.remove(reference, force=True)
        for running in registry:
            stop_registry(running.port)
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)


def image_id(client: Any, reference: str) -> str:
    return str(client.api.inspect_image(reference)["Id"])


def main() -> None:
    client: Any = docker.from_env()
    client.images.get(TEST_BASE)  # fails clearly when the base image is missing
    run_id = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="modelarts-bench-stack-"))
    build_dir = context.context_dir(ROOT / "build", IMAGE_ID)
    tags = {"cold": f"stack-{run_id}-a", "pinned": f"stack-{run_id}-b"}
    changed = [CHANGE[1] if package == CHANGE[0] else package for package in PACKAGES]
    assert changed != PACKAGES, f"{CHANGE[0]} is not in {PACKAGES}"
    docker_config = work / "docker-config"  # no stored logins: inv push logs in from the environment
    docker_config.mkdir()
    (docker_config / "config.json").write_text('{"auths": {}}', "utf-8")
    config = work / "invoke-bench.yaml"
    config.write_text(yaml.safe_dump({"modelarts": {"cache_dir": str(work / "cache"),
                                                    "reports_dir": str(work / "reports")}}), "utf-8")
    versions = work / "versions.yaml"
    invoke = Invoke(config=config, versions=versions, logs=work / "logs")
    started = time.perf_counter()
    references: list[str] = []
    made: set[str] = set()
    registries: list[RunningRegistry] = []
    base = f"modelarts-bench-stack-base:{run_id}"
    results: dict[str, Any] = {"run_id": run_id, "backend": BACKEND, "base_image": f"{base} ({TEST_BASE} + a file)",
                               "packages": PACKAGES, "packages_after": changed, "change": f"{CHANGE[0]} -> {CHANGE[1]}"}
    with cleanup(client, references, made, registries, [work, build_dir]), serve() as server:
        log("starting a registry on 127.0.0.1 (scripts/registry-up.sh)")
        running = start_registry(f"bench-{run_id[:6]}", "pw-" + secrets.token_urlsafe(18))
        registries.append(running)
        registry = Registry(running)
        push_env = {"MODELARTS_REGISTRY_USER": running.user, "MODELARTS_REGISTRY_PASSWORD": running.password,
                    "DOCKER_CONFIG": str(docker_config)}
        torch_wheel = find_torch_wheel(work / "download")
        for tag in tags.values():
            references.append(f"{running.host}/{ORGANIZATION}/{REPOSITORY}:{tag}")
        references.append(base)  # removed after the images built on it
        run_base(client, base, run_id)
        base_layers = len(client.api.inspect_image(base)["RootFS"]["Layers"])

        def write_versions(tag: str, packages: Sequence[str]) -> None:
            image = entry(server, torch_wheel, base=base, registry=running.host, tag=tag, packages=packages)
            versions.write_text(yaml.safe_dump({"images": [image]}, sort_keys=False), "utf-8")

        # 1-2. cold: fetch (not counted), build with --no-cache
        write_versions(tags["cold"], PACKAGES)
        results["fetch_cold_s"] = round(invoke("fetch-cold", ["fetch"])[0], 2)
        cold_s, cold_output = invoke("build-cold", ["build", "--backend", BACKEND, "--no-cache"])
        made.add(image_id(client, references[0]))

        # 3. full push into an empty registry
        held_before = registry.catalog()
        lines_before = len(registry.log_lines())
        push_full_s, _ = invoke("push-cold", ["push"], env=push_env)
        log_after_full = registry.log_lines()
        first = registry.manifest(tags["cold"])
        first_config = registry.config(first)
        held = {str(layer["digest"]) for layer in first["layers"]} | {str(first["config"]["digest"])}
        first_rows = layer_rows(first, first_config, base_layers=base_layers, held=set())

        # 4. one pin changed: fetch again (not counted), rebuild with the engine's cache, push under a new tag
        write_versions(tags["pinned"], changed)
        results["fetch_after_pin_s"] = round(invoke("fetch-pinned", ["fetch"])[0], 2)
        rebuild_s, rebuild_output = invoke("build-pinned", ["build", "--backend", BACKEND])
        made.add(image_id(client, references[1]))
        push_incremental_s, _ = invoke("push-pinned", ["push"], env=push_env)
        log_after_incremental = registry.log_lines()
        second = registry.manifest(tags["pinned"])
        second_config = registry.config(second)
        second_rows = layer_rows(second, second_config, base_layers=base_layers, held=held)

        # what the registry's log says each push uploaded
        sizes = {str(layer["digest"]): int(layer["size"]) for manifest in (first, second)
                 for layer in [*manifest["layers"], manifest["config"]]}
        uploaded_full = uploaded_digests(log_after_full[lines_before:])
        uploaded_incremental = uploaded_digests(log_after_incremental[len(log_after_full):])

    full_bytes = sum(row["size"] for row in first_rows)
    incremental_bytes = sum(row["size"] for row in second_rows if row["changed"])
    base_bytes = sum(row["size"] for row in first_rows if row["base"])
    first_config_size, second_config_size = int(first["config"]["size"]), int(second["config"]["size"])
    rebuild_ratio = rebuild_s / cold_s
    push_ratio = incremental_bytes / full_bytes
    results.update({
        "cold_build_s": round(cold_s, 2),
        "rebuild_s": round(rebuild_s, 2),
        "rebuild_ratio": round(rebuild_ratio, 4),
        "full_push_bytes": full_bytes,
        "incremental_push_bytes": incremental_bytes,
        "push_ratio": round(push_ratio, 6),
        # the image's own layers only (the base's are on the registry already when images share a base there)
        "base_layers_bytes": base_bytes,
        "push_ratio_without_base": round(incremental_bytes / (full_bytes - base_bytes), 6),
        # the config blob is uploaded each time too (labels name the stack's pins); the manifest is a few KiB more
        "full_push_bytes_with_config": full_bytes + first_config_size,
        "incremental_push_bytes_with_config": incremental_bytes + (
            second_config_size if str(second["config"]["digest"]) not in held else 0),
        "push_full_s": round(push_full_s, 2),
        "push_incremental_s": round(push_incremental_s, 2),
        "registry_empty_before_full_push": held_before == [],
        "layers": second_rows,
        "layers_cold": first_rows,
        "changed_layers": [{"index": row["index"], "role": row["role"], "size": row["size"], "step": row["step"]}
                           for row in second_rows if row["changed"]],
        "registry_log": {
            "full_push_uploaded_blobs": len(uploaded_full),
            "full_push_uploaded_bytes": sum(sizes.get(digest, 0) for digest in uploaded_full),
            "incremental_push_uploaded_blobs": sorted(uploaded_incremental),
            "incremental_push_uploaded_bytes": sum(sizes.get(digest, 0) for digest in uploaded_incremental),
            # the log's uploads are exactly the manifest's new layers and config
            "agrees": uploaded_incremental == {row["digest"] for row in second_rows if row["changed"]} | (
                {str(second["config"]["digest"])} - held) and bool(uploaded_full),
        },
        "rebuild_ran": [step["step"] for step in build_steps(rebuild_output)
                        if not step["cached"] and not step["step"].startswith("[internal]")],
        "build_steps_cold": build_steps(cold_output),
        "build_steps_rebuild": build_steps(rebuild_output),
        "goals": {name: {"goal": f"<= {goal}", "value": round(value, 4), "pass": value <= goal}
                  for (name, goal), value in zip(GOALS.items(), (rebuild_ratio, push_ratio), strict=True)},
    })
    results["total_s"] = round(time.perf_counter() - started, 1)
    report(results)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "stack.json").write_text(json.dumps(results, indent=2) + "\n", "utf-8")


def report(results: Mapping[str, Any]) -> None:
    goals = results["goals"]
    print(f"change: {results['change']} (packages {' '.join(results['packages'])})")
    print(f"fetch_cold_s: {results['fetch_cold_s']} (not counted)")
    print(f"cold_build_s: {results['cold_build_s']} (inv build --no-cache)")
    print(f"fetch_after_pin_s: {results['fetch_after_pin_s']} (not counted)")
    print(f"rebuild_s: {results['rebuild_s']} (inv build, the engine's cache)")
    print(f"rebuild_ratio: {results['rebuild_ratio']} (goal {goals['rebuild_ratio']['goal']}: "
          f"{'pass' if goals['rebuild_ratio']['pass'] else 'FAIL'})")
    print(f"full_push_bytes: {results['full_push_bytes']} ({size(results['full_push_bytes'])}, "
          f"{len(results['layers_cold'])} layers, {results['push_full_s']} s)")
    print(f"incremental_push_bytes: {results['incremental_push_bytes']} ({size(results['incremental_push_bytes'])}, "
          f"{len(results['changed_layers'])} layers, {results['push_incremental_s']} s)")
    print(f"push_ratio: {results['push_ratio']} (goal {goals['push_ratio']['goal']}: "
          f"{'pass' if goals['push_ratio']['pass'] else 'FAIL'})")
    print(f"push_ratio_without_base: {results['push_ratio_without_base']} (base layers "
          f"{size(results['base_layers_bytes'])})")
    print(f"incremental_push_bytes_with_config: {results['incremental_push_bytes_with_config']}")
    for row in results["layers"]:
        print(f"layer[{row['index']}]: {row['size']} ({size(row['size'])}) {'CHANGED' if row['changed'] else 'same'} "
              f"{row['role']}: {row['step'][:80]}")
    registry_log = results["registry_log"]
    print(f"registry_log: incremental push uploaded {len(registry_log['incremental_push_uploaded_blobs'])} blobs, "
          f"{registry_log['incremental_push_uploaded_bytes']} bytes; agrees with the manifests: "
          f"{registry_log['agrees']}")
    print(f"rebuild_ran: {'; '.join(results['rebuild_ran']) or '(every step cached)'}")
    print(f"rebuild_slowest_steps: {'; '.join(slowest(results['build_steps_rebuild'])) or '(none)'}")
    print(f"cold_slowest_steps: {'; '.join(slowest(results['build_steps_cold']))}")
    print(f"total_s: {results['total_s']}")


if __name__ == "__main__":
    main()
