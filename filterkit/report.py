"""Reports of a test run: readable per-case lines on the console, and JUnit XML for CI."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .verdict import CaseResult


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
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> int:
        return sum(not r.passed for r in self.results) + (1 if self.plugin_failures else 0)


def print_report(runs: list[TargetRun], echo: Callable[[str], None] = print) -> None:
    for run in runs:
        echo(f"{run.target}: {run.passed} passed, {run.failed} failed in {run.seconds:.2f}s")
        for result in run.results:
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
    passed = sum(r.passed for r in runs)
    failed = sum(r.failed for r in runs)
    echo(f"{passed} passed, {failed} failed")


def _indent(text: str, spaces: int) -> str:
    return text.replace("\n", "\n" + " " * spaces)


def write_junit(runs: list[TargetRun], path: Path, suite_prefix: str, spec_file: Path) -> None:
    """JUnit XML with one <testsuite> per target, one <testcase> per spec case."""
    root = ET.Element("testsuites", tests=str(sum(len(r.results) for r in runs)),
                      failures=str(sum(r.failed for r in runs)))
    for run in runs:
        suite = ET.SubElement(root, "testsuite", name=f"{suite_prefix}.{run.target}",
                              tests=str(len(run.results) + (1 if run.plugin_failures else 0)),
                              failures=str(run.failed), errors="0", time=f"{run.seconds:.3f}")
        for result in run.results:
            case = ET.SubElement(suite, "testcase", name=result.case.name,
                                 classname=f"{suite_prefix}.{run.target}", time=f"{result.seconds:.3f}",
                                 file=str(spec_file), line=str(result.case.line))
            if not result.passed:
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
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
