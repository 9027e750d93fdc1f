"""A verification job's code on OBS: what is sent (the verification script and its probes, nothing else), where
(`<prefix>/<image id>/<content hash>/code/`, so a job always reads the code it was created with), and sending
only what the bucket does not hold already."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from modelarts_images.cloud.api import CloudError, CodeStore
from modelarts_images.errors import ConfigError, PlatformError

_OBS_DIR = re.compile(r"^(?:obs:/)?/(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?$")
CODE_FOLDER = "code"  # the last level of code_dir: the boot command finds the script under ${MA_JOB_DIR}/code
_SKIPPED = ("__pycache__",)


@dataclass(frozen=True, kw_only=True)
class ObsDir:
    bucket: str
    prefix: str  # without leading or trailing "/", may be empty

    @classmethod
    def parse(cls, text: str, *, source: str = "--obs-dir") -> ObsDir:
        """obs://bucket/prefix/ (or /bucket/prefix/, as the API writes OBS paths); ConfigError naming `source`."""
        match = _OBS_DIR.match(text.strip())
        if match is None:
            raise ConfigError(f"{source}: {text!r} is not an OBS folder: give obs://<bucket>/<folder>/ (a bucket "
                              "name is 3-63 lowercase letters, digits, '.' and '-')")
        prefix = (match["prefix"] or "").strip("/")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise ConfigError(f"{source}: {text!r}: a folder name is empty, '.' or '..'")
        return cls(bucket=match["bucket"], prefix=prefix)

    def key(self, *parts: str) -> str:
        return "/".join(part.strip("/") for part in (self.prefix, *parts) if part.strip("/"))

    def __str__(self) -> str:
        return f"obs://{self.bucket}/{self.prefix + '/' if self.prefix else ''}"


@dataclass(frozen=True, kw_only=True)
class CodeFile:
    name: str  # relative to the code folder, with "/"
    data: bytes

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data, usedforsecurity=False).hexdigest()  # what OBS's ETag of one PUT is


@dataclass(frozen=True, kw_only=True)
class CodeUpload:
    """Where a job's code is: the keys, the folder as the API takes it, and what this run sent."""

    bucket: str
    folder: str  # the key prefix ending in /code/
    files: tuple[CodeFile, ...]
    sent: tuple[str, ...] = ()  # names uploaded by this run; the others were there with the same content

    @property
    def code_dir(self) -> str:
        """algorithm.code_dir: /bucket/<folder>, the form of the API's examples."""
        return f"/{self.bucket}/{self.folder}"

    def object_keys(self) -> tuple[str, ...]:
        return tuple(self.folder + file.name for file in self.files)


def code_files(script_dir: Path) -> tuple[CodeFile, ...]:
    """Every file under the verification script's folder (the script and its probes), in name order."""
    return tuple(CodeFile(name=path.relative_to(script_dir).as_posix(), data=path.read_bytes())
                 for path in sorted(script_dir.rglob("*"))
                 if path.is_file() and not any(part in _SKIPPED for part in path.relative_to(script_dir).parts))


def job_code(script_dir: Path, checks: Sequence[Path] = ()) -> tuple[CodeFile, ...]:
    """A job's code: the verification script and its probes, and the entry's stack checks beside the script (as
    the local verification mounts them: one code folder, so their names are unique)."""
    return (*code_files(script_dir), *(CodeFile(name=check.name, data=check.read_bytes()) for check in checks))


def content_hash(files: Sequence[CodeFile]) -> str:
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda item: item.name):
        digest.update(f"{file.name}\0{len(file.data)}\0".encode())
        digest.update(file.data)
    return digest.hexdigest()[:16]


def plan_upload(obs_dir: ObsDir, image_id: str, files: Sequence[CodeFile]) -> CodeUpload:
    """Where `files` go for `image_id`; nothing is sent (--dry-run shows this)."""
    folder = obs_dir.key(image_id, content_hash(files), CODE_FOLDER) + "/"
    return CodeUpload(bucket=obs_dir.bucket, folder=folder, files=tuple(files))


def upload(store: CodeStore, planned: CodeUpload, *, region: str) -> CodeUpload:
    """Send what the bucket does not hold with the same content; PlatformError when the bucket is not in the
    job's region (ModelArts reads code only from its own region) or OBS refuses."""
    try:
        bucket_region = store.bucket_region(planned.bucket)
        if bucket_region and region and bucket_region != region:
            raise PlatformError(f"OBS bucket {planned.bucket} is in {bucket_region}, but the job runs in {region}: "
                                "ModelArts reads a job's code only from a bucket of its own region; give --obs-dir "
                                f"a bucket in {region}")
        sent = []
        for file, key in zip(planned.files, planned.object_keys(), strict=True):
            if (store.etag(planned.bucket, key) or "").strip('"').lower() != file.md5:
                store.put(planned.bucket, key, file.data)
                sent.append(file.name)
    except CloudError as error:
        raise PlatformError(f"OBS {error.operation} of obs://{planned.bucket}/{planned.folder}: {error} "
                            f"[{error.code}]{_obs_advice(error.code)}") from error
    return CodeUpload(bucket=planned.bucket, folder=planned.folder, files=planned.files, sent=tuple(sent))


def _obs_advice(code: str) -> str:
    advice = {
        "NoSuchBucket": "; create the bucket in the job's region, or fix --obs-dir",
        "AccessDenied": "; the keys' IAM user needs OBS write rights on the bucket (obs:object:PutObject)",
        "SignatureDoesNotMatch": "; the secret key does not belong to the access key",
        "InvalidAccessKeyId": "; the access key is unknown to OBS",
    }
    return advice.get(code, "")
