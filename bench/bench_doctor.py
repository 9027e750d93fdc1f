"""Doctor benchmark: `inv doctor --json` with every source unreachable, in each way a source can be (a name that
does not resolve, a port nobody listens on, a server that accepts and never answers, https to a plain-http port),
and the engine unreachable two ways (DOCKER_HOST at a socket that does not exist; at a TCP port that accepts and
never answers). The wall time of the whole command, as a user waits for it (interpreter start and imports
included), median of RUNS runs; and doctor's own reported elapsed time.

Goal: at most 5 s. Needs no engine and no network. `key: value` lines on stdout, bench/results/doctor.json. Run
with `nox -s bench -- doctor` or `PYTHONPATH=. .venv/bin/python bench/bench_doctor.py`; about half a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: the project and its tests' helpers

from tests.support.doctor import clean_env, free_port, parsed, run_doctor, silent_server, write_scene  # noqa: E402
from tests.support.http_server import serve  # noqa: E402

GOAL_S = 5.0
RUNS = 3


def main() -> None:
    results: dict[str, Any] = {"cpus": os.cpu_count(), "goal_s": GOAL_S, "runs": RUNS}
    work = Path(tempfile.mkdtemp(prefix="modelarts-bench-doctor-"))
    with silent_server() as slow, silent_server() as silent_engine, serve() as plain:
        scene = write_scene(work, installer="https://conda.bench.invalid/miniconda",
                            wheel=f"http://127.0.0.1:{free_port()}/whl", pip_index=f"http://127.0.0.1:{slow}/simple",
                            apt_mirror=f"https://127.0.0.1:{plain.port}/apt", registry=f"127.0.0.1:{free_port()}",
                            base_image=f"127.0.0.1:{free_port()}/library/ubuntu:22.04")
        engines = {"no_socket": "unix:///nonexistent/bench/docker.sock",
                   "silent_tcp": f"tcp://127.0.0.1:{silent_engine}"}
        for name, host in engines.items():
            env = clean_env(DOCKER_HOST=host, PIP_INDEX_URL="https://pypi.bench.invalid/simple/")
            walls, reported = [], []
            for _ in range(RUNS):
                started = time.monotonic()
                result = run_doctor(scene, "--json", "--device", "cpu", env=env, timeout=120)
                walls.append(time.monotonic() - started)
                document = parsed(result)
                engine = next(row for row in document["rows"] if row["check"] == "engine")
                if result.returncode != 8 or engine["level"] != "missing":
                    raise SystemExit(f"doctor did not report the engine missing (exit {result.returncode}): "
                                     f"{result.stderr}")
                reported.append(document["elapsed_s"])
            sources = [row for row in document["rows"] if row["check"].startswith("source ")]
            results[name] = {
                "wall_s": round(statistics.median(walls), 2),
                "wall_max_s": round(max(walls), 2),
                "reported_elapsed_s": round(statistics.median(reported), 2),
                "deadline_s": document["deadline_s"],
                "sources": len(sources),
                "sources_reached": sum(1 for row in sources if row["facts"]["status"] is not None),
                "failed_at": sorted({str(row["facts"]["failed"]) for row in sources}),
            }
    shutil.rmtree(work, ignore_errors=True)
    results["worst_wall_s"] = max(results[name]["wall_max_s"] for name in engines)
    results["within_goal"] = results["worst_wall_s"] <= GOAL_S
    for key, value in results.items():
        print(f"{key}: {value}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "doctor.json").write_text(json.dumps(results, indent=2) + "\n", "utf-8")


if __name__ == "__main__":
    main()
