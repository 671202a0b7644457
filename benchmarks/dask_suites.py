"""Dask's own test modules on kong: how many tests that pass under dask pass under kong.

    python -m benchmarks.dask_suites --backend threads|processes \\
        --suites array-core,bag,dataframe-groupby [--json out.json] [-k expr] [--junit-dir DIR]

For each suite (one test module of the installed dask package, see SUITES) pytest runs
twice, each in its own subprocess: once plain, on dask's own schedulers, and once with the
`benchmarks.kong_everywhere` plugin making one kong session on `--backend` serve every
scheduler name and the default. Both runs write junit XML; the two are compared test id
by test id. A suite's score is how many of the tests that pass under dask also pass under
kong; every test that passes under dask and not under kong is listed with the first line
of its failure message. Tests that fail or skip under dask do not count. The plain run
does not depend on the backend: `--dask-results DIR` reuses one from an earlier
`--junit-dir` instead of running it again.

Each test has a pytest-timeout (`--timeout`, signal method, so a hung test fails and the
run goes on) and each pytest run an overall budget (`--run-budget`), after which it is
interrupted like a Ctrl-C, so that the kong session still closes. A pytest process that
dies (a segfault) is started again on the tests it had not reached, and the test it died
in is reported as "crashed" (see `run_mode`). pytest reads a small config of our own
(markers dask uses, `-m "not network"`), never this repository's setup.cfg, whose
warnings-as-errors is for dask-kong's tests, not dask's. dask's test_linalg.py needs
scipy (not a dependency of dask-kong): without it that suite reports every test skipped.

On the processes backend, the tests that fail under kong are run once more under dask's
own multiprocessing scheduler serving every name (`--kong-backend=dask-processes` of the
plugin). A test that fails there too observes state in the test's own process (it counts
calls with `nonlocal`, reads a lock it passed, writes into a NumPy array it made, passes
`scheduler="threads"` and means it): it cannot pass with workers in other processes, on
kong or on dask. A test that passes there with a wrong result kong refuses on purpose
(`REFUSALS`: `da.store` into the test's own NumPy array, which dask's test only checks
ran) is "refused by design". The report lists both apart and gives the score without them
(`percent_apart_from_processes`) beside the plain one.

The exit status is 1 when some test passes under dask and not under kong.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import dask

#: Suite name -> test module, relative to the installed dask package.
SUITES: dict[str, str] = {
    "array-core": "array/tests/test_array_core.py",
    "array-linalg": "array/tests/test_linalg.py",
    "array-reductions": "array/tests/test_reductions.py",
    "bag": "bag/tests/test_bag.py",
    "dataframe-groupby": "dataframe/tests/test_groupby.py",
    "dataframe-shuffle": "dataframe/tests/test_shuffle.py",
    "dataframe-multi": "dataframe/tests/test_multi.py",
}
BACKENDS = ("threads", "processes")
MODES = ("dask", "kong")
#: The cross-check of kong's failures on the processes backend (see the module doc).
DASK_PROCESSES = "dask-processes"
#: Errors kong raises on purpose where dask's multiprocessing scheduler returns a wrong
#: result (`dask_kong.runtime.shippable`): text in the failure -> why.
REFUSALS = {
    "of the calling process (da.store)": "da.store into an array of the test's process, "
    "which workers in other processes cannot write (dask's processes scheduler leaves it "
    "unwritten)",
}
PLUGIN = "benchmarks.kong_everywhere"
REPO_ROOT = Path(__file__).resolve().parent.parent

# Markers dask's test modules use, registered so that pytest does not warn about each.
# Network tests need the internet, which neither CI nor the dev machine is promised.
PYTEST_INI = """\
[pytest]
markers =
    slow: dask's slow tests
    network: needs the internet
    gpu: needs a GPU (cupy)
    flaky: rerun by pytest-rerunfailures in dask's CI
    skip_with_pyarrow_strings: see dask/conftest.py
    xfail_with_pyarrow_strings: see dask/conftest.py
xfail_strict = true
"""
DEFAULT_MARKERS = "not network"
REASON_CHARS = 300  # a reason is one line of a table, not a traceback
NO_TESTS_COLLECTED = 5  # pytest's exit status when nothing matched
PYTEST_EXIT_CODES = range(6)  # pytest's own statuses; anything else: the process died
MAX_CRASHES = 20  # a module that kills pytest this often is reported, not retried on


@dataclass
class Outcome:
    """One test's result in one run, from its junit XML `testcase`."""

    status: str  # "passed" | "failed" | "error" | "skipped"
    message: str = ""


@dataclass
class RunInfo:
    """One pytest subprocess: what it ran and how it ended."""

    mode: str
    command: list[str]
    returncode: int | None
    seconds: float
    log: str
    counts: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False  # the run budget ran out
    leaked_pids: list[int] = field(default_factory=list)
    #: `source_fingerprint()` when the run started: which dask_kong code it measured.
    dask_kong_source: str = ""
    #: The junit XML of an earlier run used instead of running (see --dask-results).
    reused_from: str = ""
    #: Tests in which the pytest process died (it was started again after each).
    crashed_in: list[str] = field(default_factory=list)
    #: PIDs of a dead pytest's kong session that we ended (see `end_leftovers`).
    ended_after_crash: list[int] = field(default_factory=list)


@dataclass
class SuiteResult:
    """A suite's comparison: the JSON `suites` entry and a table row."""

    suite: str
    modules: list[str]
    backend: str
    passed_dask: int = 0
    passed_both: int = 0
    percent: float | None = None
    #: Tests that pass under dask and not under kong: id -> one-line reason.
    kong_failures: dict[str, str] = field(default_factory=dict)
    #: Tests that pass under kong and not under dask (informative, not scored).
    kong_only_passes: list[str] = field(default_factory=list)
    #: Of `kong_failures`, those that fail under dask's multiprocessing scheduler too.
    fail_on_dask_processes: list[str] = field(default_factory=list)
    #: Of `kong_failures`, those kong refuses before running, by design, while dask's
    #: multiprocessing scheduler runs them to a silently wrong result (see REFUSALS).
    refused_by_design: list[str] = field(default_factory=list)
    #: The score without `fail_on_dask_processes` (processes backend only).
    percent_apart_from_processes: float | None = None
    note: str = ""
    runs: list[RunInfo] = field(default_factory=list)


# -- running pytest ----------------------------------------------------------------------


def dask_package_dir() -> Path:
    """Where the installed dask package lives: its test modules are what we run."""
    return Path(dask.__file__).resolve().parent


def write_ini(directory: Path) -> Path:
    """Our pytest config, in `directory` (see PYTEST_INI for why our own)."""
    path = directory / "pytest.ini"
    path.write_text(PYTEST_INI)
    return path


@dataclass
class RunFiles:
    """Where one run (all its attempts) keeps its files."""

    stem: Path  # work_dir / "<suite>-dask" or work_dir / "<suite>-<backend>-kong"

    def junit(self, attempt: int) -> Path:
        return self.stem.with_name(
            f"{self.stem.name}.{attempt}.xml" if attempt else f"{self.stem.name}.xml"
        )

    @property
    def log(self) -> Path:
        return self.stem.with_name(self.stem.name + ".log")

    @property
    def progress(self) -> Path:
        return self.stem.with_name(self.stem.name + ".progress.jsonl")

    @property
    def pids(self) -> Path:
        return self.stem.with_name(self.stem.name + ".pids.json")

    def clear(self) -> None:
        """Remove what an earlier run with the same name left (it would be resumed)."""
        for path in self.stem.parent.glob(self.stem.name + ".*"):
            path.unlink()


def pytest_command(
    modules: list[Path],
    junit: Path,
    ini: Path,
    *,
    backend: str | None,
    keyword: str | None,
    timeout_s: float,
    files: RunFiles,
) -> list[str]:
    """The pytest command line for one run; `backend=None` is the plain dask run.

    rootdir is site-packages, so test ids read `dask/bag/tests/test_bag.py::test_x`, and
    conftest files are looked up from there down, so dask's own `dask/conftest.py` (its
    `shuffle_method` fixture) is loaded in both runs. Both runs load our plugin for its
    progress log; only the kong run asks it for a kong session."""
    site_packages = dask_package_dir().parent
    command = [
        sys.executable,
        "-m",
        "pytest",
        *map(str, modules),
        "-q",
        "-c",
        str(ini),
        f"--rootdir={site_packages}",
        f"--confcutdir={site_packages}",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        f"--timeout={timeout_s:g}",
        "--timeout-method=signal",
        "-m",
        DEFAULT_MARKERS,
        "-p",
        PLUGIN,
        f"--progress-log={files.progress}",
    ]
    if keyword:
        command += ["-k", keyword]
    if backend is not None:
        command += [f"--kong-backend={backend}", f"--kong-pids-file={files.pids}"]
    return command


def subprocess_env() -> dict[str, str]:
    """The environment of a run: ours, with this checkout importable (the plugin lives in
    `benchmarks/`), so the script works from a checkout that is not installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def run_pytest(
    command: list[str], cwd: Path, log: Path, budget_s: float
) -> tuple[int | None, bool]:
    """Run pytest, output to `log`; after `budget_s` interrupt it as Ctrl-C would (pytest
    then still writes its junit XML and the plugin closes the kong session), and kill it
    only if that does not end it. Returns (returncode, interrupted)."""
    with open(log, "ab") as out:  # appended: a resumed run adds to the same log
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=subprocess_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: a kill reaches its helpers, not us
        )
        try:
            return process.wait(timeout=budget_s), False
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=60), True
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            return process.wait(), True


# -- reading junit XML -------------------------------------------------------------------


def parse_junit(path: Path) -> dict[str, Outcome]:
    """Test id -> outcome. A missing or unreadable file (the run crashed) is no tests."""
    try:
        root = ET.parse(path).getroot()
    except (FileNotFoundError, ET.ParseError):
        return {}
    outcomes: dict[str, Outcome] = {}
    for case in root.iter("testcase"):
        outcomes[test_id(case)] = case_outcome(case)
    return outcomes


def test_id(case: ET.Element) -> str:
    """`dask.bag.tests.test_bag` + `test_x[p]` -> `dask/bag/tests/test_bag.py::test_x[p]`,
    as pytest itself names the test (classes keep their dotted part after the module)."""
    classname = case.get("classname", "")
    name = case.get("name", "")
    parts = classname.split(".")
    # the module is the last part that starts with "test_"; anything after is a class
    module_end = max((i for i, p in enumerate(parts) if p.startswith("test_")), default=-1)
    if module_end < 0:
        return f"{classname}::{name}" if classname else name
    module = "/".join(parts[: module_end + 1]) + ".py"
    return "::".join([module, *parts[module_end + 1 :], name])


def case_outcome(case: ET.Element) -> Outcome:
    """A testcase's status; a failure or error wins over a skip (a teardown error)."""
    for status in ("failure", "error"):
        child = case.find(status)
        if child is not None:
            kind = "failed" if status == "failure" else "error"
            return Outcome(kind, first_line(child.get("message") or child.text or ""))
    child = case.find("skipped")
    if child is not None:
        return Outcome("skipped", first_line(child.get("message") or ""))
    return Outcome("passed")


def first_line(message: str) -> str:
    """The first non-empty line of a message, shortened for a table."""
    for line in message.splitlines():
        if line.strip():
            return line.strip()[:REASON_CHARS]
    return ""


def count_statuses(outcomes: dict[str, Outcome]) -> dict[str, int]:
    """How many tests of a run ended in each status."""
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return counts


# -- comparing ---------------------------------------------------------------------------


def compare(
    result: SuiteResult, dask_run: dict[str, Outcome], kong_run: dict[str, Outcome]
) -> None:
    """Fill `result`'s score from the two runs' outcomes."""
    passing = [tid for tid, o in dask_run.items() if o.status == "passed"]
    result.passed_dask = len(passing)
    for tid in passing:
        outcome = kong_run.get(tid)
        if outcome is not None and outcome.status == "passed":
            result.passed_both += 1
        else:
            result.kong_failures[tid] = describe_failure(outcome)
    result.kong_only_passes = sorted(
        tid
        for tid, o in kong_run.items()
        if o.status == "passed" and dask_run.get(tid, Outcome("missing")).status != "passed"
    )
    if result.passed_dask:
        result.percent = round(100.0 * result.passed_both / result.passed_dask, 2)


def describe_failure(outcome: Outcome | None) -> str:
    """One line saying why a test did not pass under kong."""
    if outcome is None:
        return "not run under kong (the run crashed or was interrupted before it)"
    return f"{outcome.status}: {outcome.message}" if outcome.message else outcome.status


def skip_note(outcomes: dict[str, Outcome]) -> str:
    """Why a whole module did not run (a module-level importorskip), if that is the case."""
    if outcomes and all(o.status == "skipped" for o in outcomes.values()):
        return "every test skipped: " + next(iter(outcomes.values())).message
    return ""


# -- one suite ---------------------------------------------------------------------------


@dataclass
class RunSettings:
    """What every pytest run of one invocation shares."""

    backend: str
    keyword: str | None
    timeout_s: float
    budget_s: float
    work_dir: Path
    ini: Path
    #: Run the dask and the kong run at once: halves a short run's wall time (the CI
    #: slice); the full comparison runs them one after the other, so neither slows the
    #: other's timing-sensitive tests.
    concurrent: bool = False
    #: An earlier run's --junit-dir whose plain-dask results stand in for a new dask run
    #: (the baseline does not depend on the kong backend; it takes as long as kong's).
    dask_results: Path | None = None


def run_mode(
    suite: str, modules: list[str], mode: str, settings: RunSettings
) -> tuple[RunInfo, dict[str, Outcome]]:
    """Run `suite` (its `modules`) plain (`mode="dask"`) or on kong, and read its junit
    XML. A pytest process that dies in a test (a segfault loses its junit XML) is started
    again on the tests it had not started; the test it died in counts as "crashed", and
    the tests it finished before count as its progress log recorded them."""
    name = f"{suite}-{mode}" if mode != "kong" else f"{suite}-{settings.backend}-kong"
    files = RunFiles(settings.work_dir / name)
    files.clear()
    info = RunInfo(mode, [], None, 0.0, str(files.log), dask_kong_source=source_fingerprint())
    outcomes: dict[str, Outcome] = {}  # from junit XML, where an attempt wrote it
    crashed: dict[str, Outcome] = {}
    started = time.perf_counter()
    for attempt in range(MAX_CRASHES + 1):
        command = pytest_command(
            [dask_package_dir() / module for module in modules],
            files.junit(attempt),
            settings.ini,
            backend=run_backend(mode, settings.backend),
            keyword=settings.keyword,
            timeout_s=settings.timeout_s,
            files=files,
        )
        info.command = info.command or command
        budget_s = max(settings.budget_s - (time.perf_counter() - started), 1.0)
        info.returncode, info.interrupted = run_pytest(
            command, settings.work_dir, files.log, budget_s
        )
        outcomes.update(parse_junit(files.junit(attempt)))
        leaked, ended = end_leftovers(files.pids)
        info.leaked_pids += leaked
        info.ended_after_crash += ended
        if info.interrupted or info.returncode in PYTEST_EXIT_CODES:
            break
        victim = running_test(files.progress)
        if victim is None:  # died outside any test: nothing to resume past
            break
        crashed[victim] = Outcome("crashed", f"pytest died ({exit_reason(info.returncode)})")
        info.crashed_in.append(victim)
        progress(f"{suite}: {mode} run died in {victim}; resuming after it")
    outcomes = progress_outcomes(files.progress) | outcomes | crashed
    info.seconds = round(time.perf_counter() - started, 1)
    info.counts = count_statuses(outcomes)
    return info, outcomes


def run_backend(mode: str, backend: str) -> str | None:
    """The plugin's `--kong-backend` for a run of `mode` (None: dask as it is)."""
    return {"dask": None, "kong": backend}.get(mode, mode)


def progress_outcomes(progress_log: Path) -> dict[str, Outcome]:
    """Test id -> outcome, as the progress log recorded each test's end."""
    if not progress_log.exists():
        return {}
    events = [json.loads(line) for line in progress_log.read_text().splitlines() if line]
    return {
        e["end"]: Outcome(e.get("status", "passed"), e.get("message", ""))
        for e in events
        if "end" in e
    }


def running_test(progress_log: Path) -> str | None:
    """The test the progress log says started and never ended: where pytest died."""
    if not progress_log.exists():
        return None
    open_tests: dict[str, None] = {}
    for line in progress_log.read_text().splitlines():
        event = json.loads(line)
        if "start" in event:
            open_tests[event["start"]] = None
        else:
            open_tests.pop(event.get("end"), None)
    return next(reversed(open_tests), None)


def exit_reason(returncode: int | None) -> str:
    """`-11` -> "SIGSEGV"; anything else as the exit status it is."""
    if returncode is not None and returncode < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-returncode).name
    return f"exit status {returncode}"


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie awaiting its parent."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z"


def end_leftovers(pids_file: Path) -> tuple[list[int], list[int]]:
    """(leaked, ended): PIDs the kong session left alive after its close (a kong bug),
    and PIDs of a session that never closed because pytest died, which are ended here
    by PID (its private redis-server; workers end when their gateway's pipe closes)."""
    if not pids_file.exists():
        return [], []
    report = json.loads(pids_file.read_text())
    pids_file.unlink()
    if report.get("alive_after_close") is not None:
        return list(report["alive_after_close"]), []
    left = [pid for pid in report.get("pids", []) if pid_alive(pid)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    return [], left


def reused_dask_run(suite: str, directory: Path) -> tuple[RunInfo, dict[str, Outcome]] | None:
    """The plain-dask results of `suite` from an earlier run's files, if there are any."""
    found = [directory / f"{suite}-dask.xml", *sorted(directory.glob(f"{suite}-*-dask.xml"))]
    junit = next((path for path in found if path.exists()), None)
    if junit is None:
        return None
    outcomes = parse_junit(junit)
    info = RunInfo(
        mode="dask",
        command=[],
        returncode=None,
        seconds=junit_seconds(junit),
        log="",
        counts=count_statuses(outcomes),
        reused_from=str(junit),
    )
    return info, outcomes


def junit_seconds(junit: Path) -> float:
    """How long the tests of a junit XML file took, by its own account."""
    root = ET.parse(junit).getroot()
    return round(sum(float(suite.get("time", 0)) for suite in root.iter("testsuite")), 1)


def run_suite(suite: str, settings: RunSettings, modules: list[str] | None = None) -> SuiteResult:
    """Both runs of one suite, compared. `modules` (paths in the dask package, or test ids
    such as `bag/tests/test_bag.py::test_foldby`) make an ad-hoc suite of several modules
    in one pytest run, as the CI slice does to start pytest fewer times; by default a
    suite is its module in SUITES."""
    modules = modules or [SUITES[suite]]
    result = SuiteResult(
        suite=suite, modules=[f"dask/{m}" for m in modules], backend=settings.backend
    )
    outcomes: dict[str, dict[str, Outcome]] = {}

    def run(mode: str) -> tuple[RunInfo, dict[str, Outcome]]:
        if mode == "dask" and settings.dask_results is not None:
            reused = reused_dask_run(suite, settings.dask_results)
            if reused is not None:
                progress(f"{suite}: dask results from {reused[0].reused_from}")
                return reused
        progress(f"{suite}: running under {mode_label(mode, settings.backend)}")
        info, found = run_mode(suite, modules, mode, settings)
        progress(f"{suite}: {mode} {info.counts} in {info.seconds:.0f} s")
        return info, found

    with ThreadPoolExecutor(max_workers=len(MODES) if settings.concurrent else 1) as pool:
        for mode, (info, found) in zip(MODES, pool.map(run, MODES), strict=True):
            result.runs.append(info)
            outcomes[mode] = found
    if settings.keyword and settings.dask_results is not None:
        # a reused plain run was not selected by -k: compare what the kong run selected
        outcomes["dask"] = {t: o for t, o in outcomes["dask"].items() if t in outcomes["kong"]}
    compare(result, outcomes["dask"], outcomes["kong"])
    if settings.backend == "processes" and result.kong_failures:
        cross_check(result, suite, settings)
    result.note = skip_note(outcomes["dask"]) or run_problems(result.runs)
    return result


def cross_check(result: SuiteResult, suite: str, settings: RunSettings) -> None:
    """Run kong's failures under dask's multiprocessing scheduler (see the module doc)
    and score the suite apart from those that fail there too."""
    failed = list(result.kong_failures)
    progress(f"{suite}: {len(failed)} kong failures, cross-checked on dask's processes")
    ids = [tid.removeprefix("dask/") for tid in failed]
    info, found = run_mode(suite, ids, DASK_PROCESSES, replace(settings, keyword=None))
    result.runs.append(info)
    result.fail_on_dask_processes = [
        tid for tid in failed if found.get(tid, Outcome("missing")).status != "passed"
    ]
    result.refused_by_design = [
        tid
        for tid in failed
        if tid not in result.fail_on_dask_processes
        and any(mark in result.kong_failures[tid] for mark in REFUSALS)
    ]
    rescore(result)


def rescore(result: SuiteResult) -> None:
    """The score apart from process-bound tests and refusals by design (processes only)."""
    apart = len(result.fail_on_dask_processes) + len(result.refused_by_design)
    comparable = result.passed_dask - apart
    if result.backend == "processes" and comparable:
        result.percent_apart_from_processes = round(100.0 * result.passed_both / comparable, 2)


def run_problems(runs: list[RunInfo]) -> str:
    """Anything about the runs themselves a reader must know (budget, crash, leaks)."""
    notes = []
    for run in runs:
        if run.interrupted:
            notes.append(f"{run.mode} run interrupted at the run budget")
        elif run.returncode == NO_TESTS_COLLECTED:
            notes.append(f"{run.mode} run: no test selected")
        elif not run.counts:
            notes.append(f"{run.mode} run wrote no results (exit {run.returncode}): see {run.log}")
        if run.crashed_in:
            notes.append(f"{run.mode} run: pytest died in {len(run.crashed_in)} test(s), resumed")
        if run.leaked_pids:
            notes.append(f"{run.mode} run left processes alive: {run.leaked_pids}")
    return "; ".join(notes)


def mode_label(mode: str, backend: str) -> str:
    return "dask's schedulers" if mode == "dask" else f"kong ({backend})"


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- report ------------------------------------------------------------------------------


def render_table(results: list[SuiteResult]) -> str:
    """A markdown table, one row per suite and a total, then each kong failure (marked
    when it fails under dask's multiprocessing scheduler too)."""
    lines = [
        "| suite | pass under dask | also under kong | % | % apart from process-bound and refused "
        "| dask run s | kong run s | note |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        seconds = {run.mode: f"{run.seconds:.0f}" for run in r.runs}
        lines.append(
            f"| {r.suite} | {r.passed_dask} | {r.passed_both} | {format_percent(r.percent)} "
            f"| {format_percent(r.percent_apart_from_processes)} "
            f"| {seconds.get('dask', '')} | {seconds.get('kong', '')} | {r.note} |"
        )
    total_dask = sum(r.passed_dask for r in results)
    total_both = sum(r.passed_both for r in results)
    bound = sum(len(r.fail_on_dask_processes) + len(r.refused_by_design) for r in results)
    percent = round(100.0 * total_both / total_dask, 2) if total_dask else None
    apart = round(100.0 * total_both / (total_dask - bound), 2) if total_dask > bound else None
    lines.append(
        f"| **total** | {total_dask} | {total_both} | {format_percent(percent)} "
        f"| {format_percent(apart)} | | | |"
    )
    for r in results:
        if r.kong_failures:
            lines += ["", f"{r.suite}: {len(r.kong_failures)} pass under dask, not under kong:"]
            lines += [
                f"- `{tid}`: {reason}{failure_class(r, tid)}"
                for tid, reason in r.kong_failures.items()
            ]
    return "\n".join(lines)


def failure_class(result: SuiteResult, tid: str) -> str:
    """Why a kong failure is scored apart, if it is (see the module doc)."""
    if tid in result.fail_on_dask_processes:
        return " (fails under dask's processes scheduler too)"
    if tid in result.refused_by_design:
        return " (refused by design: wrong under dask's processes scheduler)"
    return ""


def format_percent(percent: float | None) -> str:
    return "n/a" if percent is None else f"{percent:.2f}"


def git_revision() -> str:
    """The checkout's short commit, with "+dirty" when files differ from it."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def source_fingerprint() -> str:
    """A short hash of dask_kong's files as they are on disk now. The commit alone does
    not say what ran when the working tree holds uncommitted changes, or changes during
    a run of hours; two runs with the same fingerprint measured the same code."""
    digest = hashlib.sha1()
    for path in sorted((REPO_ROOT / "dask_kong").rglob("*")):
        if path.is_file() and path.suffix in (".py", ".yaml"):
            digest.update(str(path.relative_to(REPO_ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def to_json(
    results: list[SuiteResult], settings: RunSettings, argv: list[str], git_at_start: str
) -> dict[str, Any]:
    """The JSON report: what ran, on what code, and every suite's result."""
    import pandas
    import pytest

    return {
        "command": "python -m benchmarks.dask_suites " + shlex.join(argv),
        "backend": settings.backend,
        "keyword": settings.keyword,
        "timeout_s": settings.timeout_s,
        "dask_kong_git": git_at_start,
        "dask_kong_git_at_end": git_revision(),
        "dask_kong_source_at_end": source_fingerprint(),
        "versions": {
            "dask": dask.__version__,
            "pandas": pandas.__version__,
            "pytest": pytest.__version__,
        },
        "cores": os.cpu_count(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "suites": [asdict(r) for r in results],
    }


# -- command line ------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dask_suites", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--backend", choices=BACKENDS, default="threads")
    parser.add_argument(
        "--suites", default=",".join(SUITES), help="comma-separated: " + ", ".join(SUITES)
    )
    parser.add_argument("-k", dest="keyword", default=None, help="pytest -k expression, both runs")
    parser.add_argument("--json", default=None, help="write the report as JSON here")
    parser.add_argument(
        "--junit-dir", default=None, help="keep junit XML and logs here (default: a temp dir)"
    )
    parser.add_argument(
        "--dask-results",
        default=None,
        help="an earlier run's --junit-dir: reuse its plain-dask results (same dask and -k) "
        "instead of running dask again",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="per-test timeout, s")
    parser.add_argument("--run-budget", type=float, default=4 * 3600.0, help="per pytest run, s")
    parser.add_argument(
        "--from-json",
        nargs="+",
        default=None,
        help="run nothing: print the table of earlier --json reports",
    )
    args = parser.parse_args(argv)
    unknown = [s for s in args.suites.split(",") if s not in SUITES]
    if unknown:
        parser.error(f"unknown suites {unknown}: use {', '.join(SUITES)}")
    return args


def make_settings(
    backend: str,
    work_dir: Path,
    *,
    keyword: str | None = None,
    timeout_s: float = 120.0,
    budget_s: float = 4 * 3600.0,
    concurrent: bool = False,
    dask_results: Path | None = None,
) -> RunSettings:
    """Settings for runs that keep their files in `work_dir` (our pytest.ini goes there)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    return RunSettings(
        backend=backend,
        keyword=keyword,
        timeout_s=timeout_s,
        budget_s=budget_s,
        work_dir=work_dir,
        ini=write_ini(work_dir),
        concurrent=concurrent,
        dask_results=dask_results,
    )


def results_from_json(paths: list[str]) -> list[SuiteResult]:
    """The suites of earlier JSON reports (several: one per backend or batch of suites),
    with the refusals by design classified again (`REFUSALS` may be newer than a run)."""
    results = []
    for path in paths:
        for entry in json.loads(Path(path).read_text())["suites"]:
            entry["runs"] = [RunInfo(**run) for run in entry["runs"]]
            result = SuiteResult(**entry)
            result.refused_by_design = [
                tid
                for tid, reason in result.kong_failures.items()
                if tid not in result.fail_on_dask_processes
                and any(mark in reason for mark in REFUSALS)
            ]
            rescore(result)
            results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.from_json:
        earlier = results_from_json(args.from_json)
        print(render_table(earlier))
        return 1 if any(r.kong_failures for r in earlier) else 0
    git_at_start = git_revision()
    results: list[SuiteResult] = []
    with tempfile.TemporaryDirectory(prefix="dask-suites-") as tmp:
        settings = make_settings(
            args.backend,
            Path(args.junit_dir or tmp).resolve(),
            keyword=args.keyword,
            timeout_s=args.timeout,
            budget_s=args.run_budget,
            dask_results=Path(args.dask_results).resolve() if args.dask_results else None,
        )
        for suite in args.suites.split(","):
            results.append(run_suite(suite, settings))
            # Rewritten after every suite: a run of hours that is stopped keeps its results.
            if args.json:
                report = to_json(results, settings, argv, git_at_start)
                Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(render_table(results))
    return 1 if any(r.kong_failures for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
