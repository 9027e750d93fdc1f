"""Fetch benchmark against nginx on loopback: cold fetch vs curl + sha256sum, warm re-fetch, resume after a kill.

Run with `nox -s bench` (needs root for Debian's nginx). Prints one line per figure and writes
bench/results/fetch.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORT, SLOW_PORT = 18480, 18481
FILE_MB, FILES = 256, 8  # 2 GiB in all


def make_files(directory: Path) -> dict[str, str]:
    """Random files (incompressible, like wheels) and their sha256."""
    hashes = {}
    names = ["torch-2.13.0-cp311-cp311-linux_x86_64.whl", "stand-in.sh",
             *(f"data{n}-1.0-py3-none-any.whl" for n in range(FILES - 2))]
    for name in names:
        block = os.urandom(FILE_MB << 20)
        (directory / name).write_bytes(block)
        hashes[name] = hashlib.sha256(block).hexdigest()
    return hashes


def versions_file(path: Path, port: int, hashes: dict[str, str], wheels: list[str]) -> None:
    lines = ["images:", "  - id: bench", '    python: "3.11"', "    cuda: cpu", '    torch: "2.13.0"',
             "    base_image: ubuntu:22.04", "    installer:",
             f"      url: http://127.0.0.1:{port}/stand-in.sh", f"      sha256: {hashes['stand-in.sh']}",
             "    wheels:"]
    for name in wheels:
        lines += [f"      - url: http://127.0.0.1:{port}/{name}", f"        sha256: {hashes[name]}"]
    path.write_text("\n".join(lines) + "\n", "utf-8")


def inv_fetch(work: Path, versions: Path) -> list[str]:
    config = work / "invoke-bench.yaml"
    config.write_text(f"modelarts:\n  cache_dir: {work / 'cache'}\n  organization: bench\n", "utf-8")
    return [sys.executable, "-m", "invoke", "-f", str(config), "fetch", "--no-closure", "--versions", str(versions)]


def timed(command: list[str], **kwargs: object) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    return time.perf_counter() - started


def served_bytes(port: int) -> int:
    log = Path(f"/tmp/nginx-{port}/access.log").read_text("utf-8").split()
    return sum(int(size) for size in log[2::3])


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="modelarts-bench-"))
    work.chmod(0o755)  # nginx workers run as www-data
    try:
        files = work / "files"
        files.mkdir()
        hashes = make_files(files)
        subprocess.run([str(ROOT / "scripts/nginx-up.sh"), str(files), str(PORT)], check=True)
        versions = work / "versions.yaml"
        wheels = [name for name in hashes if name != "stand-in.sh"]
        versions_file(versions, PORT, hashes, wheels)
        total = sum((files / name).stat().st_size for name in hashes)

        # curl -o then sha256sum -c, the careful manual way, one file after another.
        manual = work / "manual"
        manual.mkdir()
        (manual / "SHA256SUMS").write_text("".join(f"{h}  {n}\n" for n, h in hashes.items()), "utf-8")
        started = time.perf_counter()
        for name in hashes:
            subprocess.run(["curl", "-sSf", "-o", str(manual / name), f"http://127.0.0.1:{PORT}/{name}"], check=True)
        subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=manual, check=True)
        curl_seconds = time.perf_counter() - started
        shutil.rmtree(manual)

        cold = timed(inv_fetch(work, versions))
        warm = timed(inv_fetch(work, versions))

        # Resume: a rate-limited server, the fetch killed half-way, then run again.
        shutil.rmtree(work / "cache")
        one = work / "one.yaml"
        versions_file(one, SLOW_PORT, hashes, wheels[:1])
        subprocess.run([str(ROOT / "scripts/nginx-up.sh"), str(files), str(SLOW_PORT), "100m"], check=True)
        first_size = (files / wheels[0]).stat().st_size + (files / "stand-in.sh").stat().st_size
        process = subprocess.Popen(inv_fetch(work, one), cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        blobs = work / "cache" / "blobs" / "sha256"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill once half of the bytes are on disk
            written = sum(part.stat().st_size for part in blobs.glob("*.part")) if blobs.exists() else 0
            if written >= first_size // 2:
                break
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        before = served_bytes(SLOW_PORT)
        subprocess.run(inv_fetch(work, one), cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        again = served_bytes(SLOW_PORT) - before

        results = {
            "bytes": total,
            "curl_then_sha256sum_s": round(curl_seconds, 2),
            "cold_fetch_s": round(cold, 2),
            "cold_ratio": round(cold / curl_seconds, 3),
            "warm_refetch_s": round(warm, 2),
            "resume_first_run_bytes": before,
            "resume_bytes_again": again,
            "resume_fraction": round(again / first_size, 3),
            "resume_fraction_ideal": round(1 - before / first_size, 3),
        }
        for key, value in results.items():
            print(f"{key}: {value}")
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / "fetch.json").write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    finally:
        for port in (PORT, SLOW_PORT):
            pid = Path(f"/tmp/nginx-{port}/nginx.pid")
            if pid.exists():
                subprocess.run(["kill", pid.read_text().strip()], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
