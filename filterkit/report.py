"""Reports of a test run: readable per-case lines on the console, and JUnit XML for CI."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from .verdict import CaseResult

if TYPE_CHECKING:
    from .differential import Fidelity
    from .envoy.checks import CheckResult


@dataclass(frozen=True)
class TargetRun:
    """One target's results: per-case verdicts plus failures of the plugin outside any case
    (it failed to start, or trapped at shutdown)."""

    target: str
    results: tuple[CaseResult, ...] = ()
    plugin_failures: tuple[str, ...] = ()
    plugin_logs: tuple[str, ...] = field(default_factory=tuple)
    seconds: float = 0.0

    @property
    def passed(self) -> int:
        return sum(r.passed and r.skipped is None for r in self.results)

    @property
    def failed(self) -> int:
        return sum(not r.passed for r in self.results) + (1 if self.plugin_failures else 0)

    @property
    def skipped(self) -> int:
        """Cases this target did not run (e.g. host-only fields on an Envoy target): neither passed nor failed."""
        return sum(r.skipped is not None for r in self.results)


def print_report(runs: list[TargetRun], echo: Callable[[str], None] = print, *,
                 fidelity: Sequence[Fidelity] = (), checks: Sequence[CheckResult] = ()) -> None:
    for run in runs:
        echo(f"{run.target}: {run.passed} passed, {run.failed} failed" + (f", {run.skipped} skipped" if run.skipped else "")
             + f" in {run.seconds:.2f}s")
        for result in run.results:
            if result.skipped is not None:
                echo(f"  SKIP  {result.case.name}: {result.skipped}")
                continue
            mark = "PASS" if result.passed else "FAIL"
            echo(f"  {mark}  {result.case.name}  ({result.seconds * 1000:.0f} ms)")
            if result.passed:
                continue
            for difference in result.differences:
                echo(f"        - {_indent(difference, 10)}")
            if result.observation.logs:
                echo("        filter logs:")
                for record in result.observation.logs:
                    echo(f"          [{record.level}] {record.message}")
        for failure in run.plugin_failures:
            echo(f"  FAIL  plugin lifecycle: {_indent(failure, 8)}")
    if fidelity:
        _print_fidelity(fidelity, echo)
    if checks:
        _print_checks(checks, echo)
    passed = sum(r.passed for r in runs)
    failed = sum(r.failed for r in runs)
    skipped = sum(r.skipped for r in runs)
    summary = f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else "")
    differ = sum(f.failed for f in fidelity)
    apart = sum(f.status == "not comparable" for f in fidelity)
    if differ:
        summary += f", {differ} fidelity failure{'s' if differ != 1 else ''}"
    if apart:
        summary += f", {apart} not comparable"
    if checks:
        summary += f", checks: {sum(c.passed for c in checks)} passed, {sum(not c.passed for c in checks)} failed"
    echo(summary)


def failed_total(runs: Sequence[TargetRun], fidelity: Sequence[Fidelity] = (), checks: Sequence[CheckResult] = ()) -> int:
    """Everything that makes `filterkit test` exit 1: failed cases, fidelity failures, failed checks."""
    return sum(r.failed for r in runs) + sum(f.failed for f in fidelity) + sum(not c.passed for c in checks)


def _print_fidelity(fidelity: Sequence[Fidelity], echo: Callable[[str], None]) -> None:
    differs = [f for f in fidelity if f.failed]
    apart = [f for f in fidelity if f.status == "not comparable"]
    targets = sorted({f.envoy_target for f in fidelity})
    echo(f"fidelity (host vs {', '.join(targets)}): {len(fidelity) - len(differs) - len(apart)} same, "
         f"{len(differs)} differ, {len(apart)} not comparable")
    for f in differs:
        echo(f"  DIFF  {f.case_name}  (host vs {f.envoy_target})")
        for difference in f.differences:
            echo(f"        - {_indent(difference, 10)}")
    for f in apart:
        echo(f"  N/C   {f.case_name}  (host vs {f.envoy_target}): {f.differences[0] if f.differences else ''}")


def _print_checks(checks: Sequence[CheckResult], echo: Callable[[str], None]) -> None:
    echo(f"checks: {sum(c.passed for c in checks)} passed, {sum(not c.passed for c in checks)} failed")
    for check in checks:
        echo(f"  {'PASS' if check.passed else 'FAIL'}  {check.name}  ({check.seconds:.2f}s)"
             + (f": {check.summary}" if check.summary else ""))
        if not check.passed:
            for detail in check.details:
                echo(f"        - {_indent(detail, 10)}")


def _indent(text: str, spaces: int) -> str:
    return text.replace("\n", "\n" + " " * spaces)


def write_junit(runs: list[TargetRun], path: Path, suite_prefix: str, spec_file: Path, *,
                fidelity: Sequence[Fidelity] = (), checks: Sequence[CheckResult] = ()) -> None:
    """JUnit XML with one <testsuite> per target, one <testcase> per spec case; plus a ``fidelity`` suite
    (a failed testcase per case whose host and Envoy results differ, a skipped one per case that could not
    be compared; none when all agree) and a ``checks`` suite."""
    shown = sum(f.status != "same" for f in fidelity)
    root = ET.Element("testsuites", tests=str(sum(len(r.results) for r in runs) + shown + len(checks)),
                      failures=str(failed_total(runs, fidelity, checks)))
    for run in runs:
        suite = ET.SubElement(root, "testsuite", name=f"{suite_prefix}.{run.target}",
                              tests=str(len(run.results) + (1 if run.plugin_failures else 0)),
                              failures=str(run.failed), errors="0", skipped=str(run.skipped),
                              time=f"{run.seconds:.3f}")
        for result in run.results:
            case = ET.SubElement(suite, "testcase", name=result.case.name,
                                 classname=f"{suite_prefix}.{run.target}", time=f"{result.seconds:.3f}",
                                 file=str(spec_file), line=str(result.case.line))
            if result.skipped is not None:
                ET.SubElement(case, "skipped", message=result.skipped)
            elif not result.passed:
                failure = ET.SubElement(case, "failure", message=result.differences[0].splitlines()[0])
                failure.text = "\n".join(result.differences)
            if result.observation.logs:
                out = ET.SubElement(case, "system-out")
                out.text = "\n".join(f"[{r.level}] {r.message}" for r in result.observation.logs)
        if run.plugin_failures:
            case = ET.SubElement(suite, "testcase", name="plugin lifecycle",
                                 classname=f"{suite_prefix}.{run.target}", time="0")
            failure = ET.SubElement(case, "failure", message=run.plugin_failures[0].splitlines()[0])
            failure.text = "\n".join(run.plugin_failures)
    fidelity = [f for f in fidelity if f.status != "same"]  # only what differs or could not be compared
    if fidelity:
        name = f"{suite_prefix}.fidelity"
        suite = ET.SubElement(root, "testsuite", name=name, tests=str(len(fidelity)),
                              failures=str(sum(f.failed for f in fidelity)), errors="0",
                              skipped=str(sum(f.status == "not comparable" for f in fidelity)), time="0")
        for f in fidelity:
            case = ET.SubElement(suite, "testcase", name=f"{f.case_name} (host vs {f.envoy_target})",
                                 classname=name, time="0", file=str(spec_file), line=str(f.case_line))
            if f.failed:
                failure = ET.SubElement(case, "failure", message="fidelity: " + f.differences[0].splitlines()[0])
                failure.text = "\n".join(f.differences)
            elif f.status == "not comparable":
                ET.SubElement(case, "skipped", message="not comparable: " + (f.differences[0] if f.differences else ""))
    if checks:
        name = f"{suite_prefix}.checks"
        suite = ET.SubElement(root, "testsuite", name=name, tests=str(len(checks)),
                              failures=str(sum(not c.passed for c in checks)), errors="0",
                              time=f"{sum(c.seconds for c in checks):.3f}")
        for check in checks:
            case = ET.SubElement(suite, "testcase", name=check.name, classname=name, time=f"{check.seconds:.3f}")
            if not check.passed:
                failure = ET.SubElement(case, "failure", message=check.summary or check.name)
                failure.text = "\n".join(check.details)
            if check.summary:
                out = ET.SubElement(case, "system-out")
                out.text = "\n".join([check.summary, *check.details])
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
