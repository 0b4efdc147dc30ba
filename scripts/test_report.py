#!/usr/bin/env python3
"""The end of a test run: passed / failed / skipped counts from the JUnit files that CTest and
pytest write, every skipped test with its reason, and whether the skips are allowed.

    test_report.py --name test.sh CTEST_JUNIT [PYTEST_JUNIT ...]

A skip is allowed only when its reason says that the test needs a GPU (the reason starts with
"no CUDA device", as STEM_REQUIRE_GPU writes it); any other skip fails the run (exit 1), unless
STEM_ALLOW_SKIPS=1. A missing CTest report fails the run too. The last line is the summary that
.ci/run prints per phase: "<name>: P passed, F failed, S skipped".

Standard library only: it runs before and without the virtualenv.
"""
import argparse
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ALLOWED_SKIP = re.compile(r"^no CUDA device")


def skip_reason(case):
    """A skipped case's reason: pytest's <skipped message>, else the SKIPPED: line that
    tests/catch_main.cc (or a script's exit 77 path) printed, else the output's last line."""
    skipped = case.find("skipped")
    out = case.findtext("system-out") or ""
    found = re.findall(r"SKIPPED: (.*)", out)
    if found:
        # Catch's lines name the test case first ("SKIPPED: <test case>: <why>"); CTest's name for
        # it is "<folder>/<test case>".
        catch_name = case.get("name", "").split("/", 1)[-1]
        return found[-1].removeprefix(catch_name + ": ")
    if skipped is not None and skipped.get("message"):
        msg = skipped.get("message")
        return re.sub(r"^Skipped: ", "", msg)
    lines = [l for l in out.splitlines() if l.strip()]
    return lines[-1].strip() if lines else "(no reason given)"


def read_cases(path, pytest):
    """(name, status, reason) of every test case in a JUnit file; status is passed, failed or
    skipped. pytest's names get their module (classname) in front."""
    root = ET.parse(path).getroot()
    cases = []
    for case in root.iter("testcase"):
        name = case.get("name", "?")
        if pytest and case.get("classname"):
            name = f"{case.get('classname')}::{name}"
        if case.find("failure") is not None or case.find("error") is not None or case.get("status") == "fail":
            cases.append((name, "failed", ""))
        elif case.find("skipped") is not None or case.get("status") in ("notrun", "disabled"):
            cases.append((name, "skipped", skip_reason(case)))
        else:
            cases.append((name, "passed", ""))
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="tests", help="the run's name in the summary line")
    ap.add_argument("ctest", type=Path, help="CTest's --output-junit file")
    ap.add_argument("pytest", type=Path, nargs="*",
                    help="pytest --junitxml files, <x>.xml for the CTest entry <x>/pytest")
    args = ap.parse_args()
    allow_any = os.environ.get("STEM_ALLOW_SKIPS") == "1"

    if not args.ctest.is_file():
        print(f"{args.name}: no CTest report at {args.ctest}: the tests did not run")
        print(f"{args.name}: 0 passed, 1 failed, 0 skipped")
        return 1
    ctest = read_cases(args.ctest, pytest=False)
    pytest = {p.stem: read_cases(p, pytest=True) for p in args.pytest if p.is_file()}
    # A CTest entry "<x>/pytest" whose pytest report is here counts as its pytest cases; if the
    # entry failed but its report lists no failure (a crash, a timeout), it counts as one failure.
    def replaced(case):
        runs = pytest.get(case[0].removesuffix("/pytest"))
        return runs is not None and not (case[1] == "failed" and not any(x[1] == "failed" for x in runs))

    groups = [("ctest", [c for c in ctest if not replaced(c)])]
    groups += [(f"pytest in {name}/pytest", cases) for name, cases in pytest.items()]

    total = {"passed": 0, "failed": 0, "skipped": 0}
    bad_skips = []
    print(f"== {args.name}: test report")
    for label, cases in groups:
        counts = {k: sum(1 for c in cases if c[1] == k) for k in total}
        for k in total:
            total[k] += counts[k]
        print(f"  {label}: {len(cases)} tests: {counts['passed']} passed, {counts['failed']} failed, "
              f"{counts['skipped']} skipped")
        for name, status, reason in cases:
            if status == "failed":
                print(f"    FAILED   {name}")
            elif status == "skipped":
                allowed = bool(ALLOWED_SKIP.match(reason))
                print(f"    SKIPPED  {name}: {reason}{'' if allowed else '  [not allowed: needs no GPU]'}")
                if not allowed:
                    bad_skips.append(name)
    rc = 0
    if total["failed"]:
        rc = 1
    if bad_skips and not allow_any:
        print(f"  {len(bad_skips)} test(s) skipped for a reason other than a missing GPU: everything else must run "
              "here (STEM_ALLOW_SKIPS=1 accepts them)")
        rc = 1
    print(f"{args.name}: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
    return rc


if __name__ == "__main__":
    sys.exit(main())
