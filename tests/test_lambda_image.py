"""`python -m dask_kong lambda-image`: a Lambda build context that runs this client's
exact versions (issue #18).

The image itself needs Docker and the network; what is checked here is what can go
wrong on this side: the pins are the versions running here, the Dockerfile names this
Python and the real handler, and that handler imports in a clean virtual environment
holding exactly the pinned distributions plus dask-kong's copied source. The clean
environment is built from the distributions installed here (each one's files, as its
RECORD lists them, linked into a fresh `venv`), not downloaded: no network, about a
second, and an import that needs anything unpinned fails just as it would in the image.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from dask_kong.deploy import DOCKERFILE, HANDLER, LambdaImage, write_lambda_image

#: What tasks are pickled and unpickled with: these must be pinned, whatever else is.
MUST_MATCH = ("dask", "numpy", "pandas", "cloudpickle", "distributed")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> LambdaImage:
    out = tmp_path_factory.mktemp("lambda-image")
    done = subprocess.run(
        [sys.executable, "-m", "dask_kong", "lambda-image", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return write_lambda_image(out)  # the same files again, as objects


def pins_of(requirements: Path) -> dict[str, str]:
    lines = [line for line in requirements.read_text().splitlines() if not line.startswith("#")]
    return dict(line.split("==") for line in lines)


def test_requirements_pin_the_running_clients_versions(image: LambdaImage) -> None:
    pins = pins_of(image.requirements)
    for name in MUST_MATCH:
        assert name in pins, f"{name} is not pinned"
    for name, version in pins.items():
        assert importlib.metadata.version(name) == version, name


def test_the_dockerfile_uses_this_python_and_the_real_handler(image: LambdaImage) -> None:
    text = image.dockerfile.read_text()
    assert (
        f"FROM public.ecr.aws/lambda/python:{sys.version_info[0]}.{sys.version_info[1]}\n" in text
    )
    assert f'CMD ["{HANDLER}"]' in text
    assert "pip install --no-cache-dir -r /tmp/requirements.txt" in text
    assert "--no-deps /tmp/dask-kong" in text
    assert (image.source / "dask_kong" / "kong.yaml").is_file()
    assert image.dockerfile.name == DOCKERFILE


def link_distribution(name: str, site: Path) -> None:
    """Put installed distribution `name`'s files (its RECORD) into `site`, as pip would."""
    distribution = importlib.metadata.distribution(name)
    files = distribution.files
    assert files is not None, f"{name} has no RECORD: cannot copy it faithfully"
    for file in files:
        if file.parts[0] == "..":
            continue  # scripts in bin/: the handler does not need them
        source = Path(str(distribution.locate_file(file)))
        target = site / file
        if source.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(source, target)


@pytest.mark.timeout(240)
def test_the_handler_imports_in_a_clean_environment_of_the_pins(
    image: LambdaImage, tmp_path: Path
) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False, symlinks=True)
    purelib = sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)})
    site = Path(purelib)
    for name in pins_of(image.requirements):
        link_distribution(name, site)
    shutil.copytree(image.source / "dask_kong", site / "dask_kong")
    module, _, function = HANDLER.rpartition(".")
    check = (
        f"import importlib, sys; m = importlib.import_module({module!r}); "
        f"assert callable(m.{function}); "
        "assert not any(p.startswith('/work/') for p in sys.path), sys.path; "
        "print(m.__file__)"
    )
    done = subprocess.run(
        [str(env_dir / "bin" / "python"), "-I", "-c", check],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(site))
