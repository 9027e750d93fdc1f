"""pip, with dependency markers evaluated for the image rather than for this machine.

pip evaluates markers for the interpreter it runs on, whatever --platform and --python-version say: on an x86_64
host an aarch64 torch would pull the nvidia-* wheels its markers keep for x86_64. Run as a script (pip_resolver
starts it with pip's arguments), it sets the image's marker environment (JSON in MODELARTS_IMAGES_TARGET_MARKERS)
into pip's vendored packaging, then runs pip's own entry point."""

import json
import os
import sys

from pip._internal.cli.main import main
from pip._vendor.packaging import markers

TARGET_MARKERS = "MODELARTS_IMAGES_TARGET_MARKERS"

if __name__ == "__main__":
    target = json.loads(os.environ.pop(TARGET_MARKERS))
    host = markers.default_environment
    markers.default_environment = lambda: {**host(), **target}
    sys.exit(main())
