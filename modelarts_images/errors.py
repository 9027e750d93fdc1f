"""One error tree for the whole tool: each class carries the exit code the tasks end with."""

from __future__ import annotations


class ModelArtsImagesError(Exception):
    """A failure the user can act on; its message is shown without a traceback."""

    exit_code = 1


class ConfigError(ModelArtsImagesError):
    """versions.yaml, invoke.yaml or a command-line flag is wrong."""

    exit_code = 2


class FetchError(ModelArtsImagesError):
    """An installer or wheel could not be downloaded or did not match its hash."""

    exit_code = 3


class BuildError(ModelArtsImagesError):
    """The image could not be built."""

    exit_code = 4


class VerifyError(ModelArtsImagesError):
    """The image failed verification inside a container."""

    exit_code = 5


class RegistryError(ModelArtsImagesError):
    """Login, tagging or pushing to the registry failed."""

    exit_code = 6


class PlatformError(ModelArtsImagesError):
    """ModelArts or OBS refused or could not do what was asked (quota, flavour, image, bucket, region, keys);
    a job that ran and failed its checks is a VerifyError (5)."""

    exit_code = 7


class DoctorError(ModelArtsImagesError):
    """`inv doctor` found something the selected work needs missing on this machine or in its configuration (the
    engine, disk space, a source to download from, ...); its message names each missing check."""

    exit_code = 8


class Interrupted(BaseException):
    """SIGTERM while something billed or half-done runs (a training job being watched): what runs is stopped
    first, then the tool exits 143, as a process killed by SIGTERM does. Ctrl-C is KeyboardInterrupt (130)."""

    exit_code = 143


class EngineError(ModelArtsImagesError):
    """The container engine did not do what was asked: unreachable, refused, or failed.

    It belongs to no stage by itself: the pipeline step that used the engine raises it again as its own
    stage's error (build 4, verify 5, registry 6), with the same message.
    """


class WriteError(ModelArtsImagesError):
    """A file could not be written (disk full, permissions, a directory in the way); the pipeline step that
    wrote it raises it again as its own stage's error, with the same message."""
