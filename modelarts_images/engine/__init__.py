"""The Docker edge: the only package that talks to a container engine, and the only one that imports the
docker SDK.

- api.py: the `Engine` protocol every stage uses, and the records that go in and come out (no I/O);
- adapter.py: `connect()` and `DockerEngine`, the protocol over the docker SDK and the docker CLI;
- builds.py, cli.py: builds (classic builder through the SDK, BuildKit through the docker CLI) and their
  command lines; images.py: base-image checks, image configs and layers; containers.py: runs that are always
  removed; publishing.py: login, tag and push with every event of the stream checked.

Output of builds goes to the `modelarts_images.engine.build` logger at INFO, one record per line; pushes log to
`modelarts_images.engine.push`.
"""
