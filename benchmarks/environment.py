"""What the numbers were measured on: machine, library versions, BLAS threads.

BLAS threads matter as much as cores here: dask's threaded scheduler (and kong's embedded
threads backend) runs several BLAS calls at once, and an OpenBLAS that also uses every core
per call oversubscribes the machine. We ask, in order: threadpoolctl if importable; else the
OpenBLAS library numpy has loaded, through its own C API (found in /proc/self/maps); else
numpy's build configuration and the environment variables. `source` says which answered.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

BLAS_ENV_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# OpenBLAS symbol prefixes and suffixes: plain builds, and the scipy-openblas wheels that
# numpy ships (symbols renamed so they cannot clash with a system OpenBLAS).
OPENBLAS_PREFIXES = ("scipy_openblas_", "openblas_")
OPENBLAS_SUFFIXES = ("64_", "_64_", "")


def describe_machine() -> dict[str, Any]:
    """Cores, memory, CPU model, platform and Python of this machine."""
    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": _meminfo_gb("MemTotal"),
        "memory_available_gb": _meminfo_gb("MemAvailable"),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "hostname": platform.node(),
    }


def describe_versions() -> dict[str, Any]:
    """Versions of the libraries under test, and the dask-kong checkout."""
    versions: dict[str, Any] = {}
    for name in ("dask", "distributed", "numpy", "dask_kong"):
        try:
            module = __import__(name)
            versions[name.replace("_", "-")] = getattr(module, "__version__", "unknown")
        except Exception as exc:  # a broken dask_kong must not stop the report
            versions[name.replace("_", "-")] = f"unavailable: {type(exc).__name__}: {exc}"
    versions["dask-kong-git"] = _git_revision()
    return versions


def describe_blas() -> dict[str, Any]:
    """The BLAS numpy uses and how many threads it runs per call (see module docstring)."""
    import numpy as np

    info: dict[str, Any] = {"source": None, "library": None, "threads": None}
    with contextlib.suppress(Exception):
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["library"] = f"{blas.get('name')} {blas.get('version')}".strip()
    try:
        from threadpoolctl import threadpool_info

        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            info["source"] = "threadpoolctl"
            info["threads"] = pools[0]["num_threads"]
            info["library"] = f"{pools[0]['internal_api']} {pools[0].get('version')}"
    except ImportError:
        probe = OpenBlas.find()
        if probe is not None:
            info["source"] = f"OpenBLAS C API ({Path(probe.path).name})"
            info["threads"] = probe.get_num_threads()
            info["openblas_config"] = probe.get_config()
    if info["source"] is None:
        info["source"] = "numpy build config and environment variables"
    info["env"] = {var: os.environ.get(var) for var in BLAS_ENV_VARS}
    info["distributed_worker_env"] = _distributed_pre_spawn_environ()
    return info


def set_blas_threads(threads: int) -> str:
    """Use `threads` BLAS threads here and in every process started from now on."""
    for var in BLAS_ENV_VARS:
        os.environ[var] = str(threads)
    probe = OpenBlas.find()
    if probe is None:
        return "environment variables only (no OpenBLAS C API found in this process)"
    probe.set_num_threads(threads)
    return f"OpenBLAS C API and environment variables ({probe.get_num_threads()} threads)"


class OpenBlas:
    """The OpenBLAS library loaded in this process, through its C API."""

    def __init__(self, path: str, library: ctypes.CDLL, prefix: str, suffix: str) -> None:
        self.path = path
        self._library = library
        self._prefix = prefix
        self._suffix = suffix

    @classmethod
    def find(cls) -> OpenBlas | None:
        """The OpenBLAS numpy has loaded, or None (another BLAS, or not on Linux)."""
        import numpy  # noqa: F401  (loads the BLAS so that it shows in the maps)

        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return None
        paths = {line.split()[-1] for line in maps.splitlines() if "openblas" in line.lower()}
        for path in sorted(paths):
            try:
                library = ctypes.CDLL(path)
            except OSError:
                continue
            for prefix in OPENBLAS_PREFIXES:
                for suffix in OPENBLAS_SUFFIXES:
                    if hasattr(library, f"{prefix}get_num_threads{suffix}"):
                        return cls(path, library, prefix, suffix)
        return None

    def _function(self, name: str) -> Any:
        return getattr(self._library, f"{self._prefix}{name}{self._suffix}")

    def get_num_threads(self) -> int:
        return int(self._function("get_num_threads")())

    def set_num_threads(self, threads: int) -> None:
        self._function("set_num_threads")(ctypes.c_int(threads))

    def get_config(self) -> str:
        function = self._function("get_config")
        function.restype = ctypes.c_char_p
        return str(function().decode())


def _meminfo_gb(field: str) -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 2**20, 1)  # kB -> GiB
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git(*args: str) -> str:
    """Output of one git command in the checkout the suite runs from."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()


def _git_revision() -> str | None:
    """Commit of the checkout the suite runs from, with "+dirty" for local changes."""
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def _distributed_pre_spawn_environ() -> dict[str, Any] | None:
    """Environment distributed's nanny gives its workers (it pins BLAS to 1 thread)."""
    try:
        import dask.config
        import distributed  # noqa: F401  (registers distributed's config defaults)

        environ = dask.config.get("distributed.nanny.pre-spawn-environ", {})
        return {k: v for k, v in environ.items() if k in BLAS_ENV_VARS}
    except Exception:
        return None


def describe() -> dict[str, Any]:
    """Everything above, as one JSON-ready dict."""
    return {
        "machine": describe_machine(),
        "versions": describe_versions(),
        "blas": describe_blas(),
    }
