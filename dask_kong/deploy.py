"""A container image for AWS Lambda that runs this client's exact dask-kong.

Tasks are pickled by the client and unpickled in the function, so the function must run
the same Python minor version and the same versions of dask, NumPy, pandas, cloudpickle
and dask-kong itself. `write_lambda_image(out)` (`python -m dask_kong lambda-image`)
writes, into one build context:

* `requirements.txt`: every distribution dask-kong needs at run time (its dependencies
  and theirs, with the extras it asks for), pinned `==` to the version installed here;
* `dask-kong/`: dask-kong's source from this checkout (it is not on a package index),
  installed in the image without dependencies, so the pins above are what runs;
* `Dockerfile`: AWS's Lambda base image for this Python, the two installs, and the
  handler `dask_kong.handler.lambda_handler`.

dask-kong itself is not published, so nothing here reaches a package index; the image
build (`docker build`) does, for the pinned wheels.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .errors import KongError

#: The distribution whose dependencies the image pins.
DISTRIBUTION = "dask-kong"
#: What Lambda calls: module path and function, as the Dockerfile's CMD names it.
HANDLER = "dask_kong.handler.lambda_handler"
#: Files of the checkout that `pip install` needs to build dask-kong in the image.
SOURCE_FILES = ("pyproject.toml", "README.md")
SOURCE_PACKAGE = "dask_kong"
#: Build context layout.
REQUIREMENTS = "requirements.txt"
SOURCE_DIR = "dask-kong"
DOCKERFILE = "Dockerfile"

_DOCKERFILE_TEMPLATE = """\
# Written by `python -m dask_kong lambda-image` for Python {python} and dask-kong {version}.
# Build and push:  docker build --platform linux/amd64 -t kong-worker .
FROM public.ecr.aws/lambda/python:{python}
COPY {requirements} /tmp/{requirements}
# The client's exact versions: tasks pickled by the client are unpickled here.
RUN pip install --no-cache-dir -r /tmp/{requirements}
COPY {source} /tmp/{source}
# dask-kong from the client's checkout, without dependencies: the pins above are what runs.
RUN pip install --no-cache-dir --no-deps /tmp/{source} && rm -rf /tmp/{source}
CMD ["{handler}"]
"""


@dataclass(frozen=True)
class LambdaImage:
    """What `write_lambda_image` wrote."""

    dockerfile: Path
    requirements: Path
    source: Path
    #: the pinned requirements, `name==version`, sorted by name
    pins: tuple[str, ...]


def runtime_pins(declared: Sequence[str]) -> tuple[str, ...]:
    """`name==version` of every installed distribution that the requirements `declared`
    (dask-kong's own, from its pyproject.toml) need at run time: their closure, extras
    followed, each pinned to the version installed here."""
    versions: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = _applying([Requirement(text) for text in declared], frozenset())
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        try:
            versions[name] = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError as exc:
            raise KongError(f"{requirement.name} is required but not installed") from exc
        step = (name, frozenset(requirement.extras))
        if step not in seen:
            seen.add(step)
            installed = importlib.metadata.requires(requirement.name) or []
            todo.extend(_applying([Requirement(t) for t in installed], step[1]))
    return tuple(f"{name}=={version}" for name, version in sorted(versions.items()))


def _applying(requirements: list[Requirement], extras: frozenset[str]) -> list[Requirement]:
    """Those of `requirements` whose markers hold here with `extras` asked for."""
    # evaluate() completes the environment with this interpreter's and platform's.
    return [
        r
        for r in requirements
        if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in extras or {""})
    ]


def declared_requirements(root: Path) -> list[str]:
    """`project.dependencies` of the checkout's pyproject.toml."""
    with open(root / "pyproject.toml", "rb") as f:
        dependencies: list[str] = tomllib.load(f)["project"]["dependencies"]
    return dependencies


def checkout_root() -> Path:
    """The checkout dask-kong runs from (where its pyproject.toml is)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise KongError(
            f"dask-kong at {root} is not a source checkout (no pyproject.toml): run "
            "lambda-image from the repository dask-kong was installed from"
        )
    return root


def write_lambda_image(out: Path) -> LambdaImage:
    """Write the build context described in the module docstring into `out` (created;
    an existing Dockerfile, requirements or source copy there is replaced)."""
    root = checkout_root()
    out.mkdir(parents=True, exist_ok=True)
    pins = runtime_pins(declared_requirements(root))
    requirements = out / REQUIREMENTS
    requirements.write_text(
        f"# The client's versions (Python {python_version()}), from `python -m dask_kong "
        "lambda-image`.\n" + "\n".join(pins) + "\n"
    )
    source = out / SOURCE_DIR
    if source.exists():
        shutil.rmtree(source)
    source.mkdir()
    for name in SOURCE_FILES:
        shutil.copy2(root / name, source / name)
    shutil.copytree(
        root / SOURCE_PACKAGE,
        source / SOURCE_PACKAGE,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    dockerfile = out / DOCKERFILE
    dockerfile.write_text(
        _DOCKERFILE_TEMPLATE.format(
            python=python_version(),
            version=importlib.metadata.version(DISTRIBUTION),
            requirements=REQUIREMENTS,
            source=SOURCE_DIR,
            handler=HANDLER,
        )
    )
    return LambdaImage(dockerfile, requirements, source, pins)


def python_version() -> str:
    """This interpreter's `major.minor`: the Lambda base image's tag."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"
