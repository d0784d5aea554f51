"""Mutation testing of the code that carries the product's promises: `make test-mutation`.

mutmut (configured in pyproject.toml, `[tool.mutmut]`) copies the code to `mutants/`, mutates every function of the
modules it may touch, and runs each mutant against the fast tests that reach that function. This runs it on the
functions of the areas below, then prints a score per area: killed out of the mutants that are not equivalent. A
survivor is either listed in `equivalent.toml` with the reason no test can tell it apart, or it is a missing test and
is printed as one. Exit status 1 when an area scores under the target.

    python -m tests.mutation              # a fresh run (about 2 h 20 min on 2 cores)
    python -m tests.mutation --reuse      # keep mutants/ and its results: go on where a stopped run ended
    python -m tests.mutation --report     # only print the table of the last run
    python -m tests.mutation --area readiness --area template   # only the areas whose names contain these words
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import os
import re
import shutil
import subprocess
import sys
import tokenize
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MUTMUT = Path(sys.executable).with_name("mutmut")
EQUIVALENTS_FILE = Path(__file__).with_name("equivalent.toml")
TARGET = 0.95
# "ǁ" is how mutmut names a method: module.xǁClassǁmethod__mutmut_N.
AREAS: dict[str, list[str]] = {
    "readiness judgement (activities/flux.py)": [
        "activities.flux.x_judge_object__*",
        "activities.flux.x__conditions__*",
        "activities.flux.x__explanation__*",
        "activities.flux.x__revision_gap__*",
        "activities.flux.x_summarize__*",
        "activities.flux.xǁFluxActivitiesǁcheck_flux_readiness__*",
    ],
    "template safety (provisioner/templating.py)": [
        "provisioner.templating.x_render_project__*",
        "provisioner.templating.x_check_against_template__*",
        "provisioner.templating.x__validated_values__*",
        "provisioner.templating.x__check_value__*",
        "provisioner.templating.x__normalize_kustomize_path__*",
        "provisioner.templating.xǁ_BoundedSandboxǁcall_binop__*",
        "provisioner.templating.x__power_bits__*",
        "provisioner.templating.xǁ_Rendererǁ*",
        "provisioner.templating.x__render_files__*",
        "provisioner.templating.x__collect_sources__*",
        "provisioner.templating.x__path_problem__*",
        "provisioner.templating.x__refuse_file_directory_clashes__*",
        "provisioner.templating.x__check_kustomization*",
        "provisioner.templating.x__local_references__*",
        "provisioner.templating.x__is_local_reference__*",
        "provisioner.templating.x__read_regular_file__*",
        "provisioner.templating.x__is_utf8__*",
        "provisioner.templating.x__is_real_directory__*",
    ],
    "request validation (provisioner/contracts.py)": [
        "provisioner.contracts.x_validate_spec__*",
        "provisioner.contracts.x_validate_update__*",
        "provisioner.contracts.x__display_name_errors__*",
        "provisioner.contracts.x__environment_errors__*",
        "provisioner.contracts.x__run_option_errors__*",
        "provisioner.contracts.x__validate_failure_policy__*",
        "provisioner.contracts.x__validate_parameters__*",
        "provisioner.contracts.x__parameter_value_problem__*",
        "provisioner.contracts.x_is_template_name__*",
        "provisioner.contracts.x_validate_teardown_spec__*",
        "provisioner.contracts.x_slug_errors__*",
    ],
    "record freshness (activities/records.py)": [
        "activities.records.x_upsert_project__*",
        "activities.records.x__claim__*",
        "activities.records.x_update_project__*",
        "activities.records.x__provided__*",
        "activities.records.x__revision_kept_for__*",
        "activities.records.x__not_newer_than__*",
        "activities.records.x__checked_update__*",
        "activities.records.x__upsert_statement__*",
        "activities.records.x__conflict_changes__*",
        "activities.records.x__fresher__*",
    ],
    "repository ownership (activities/git.py)": [
        "activities.git.xǁLocalRepositoryProviderǁensure_repository__*",
        "activities.git.xǁLocalRepositoryProviderǁfind_repository__*",
        "activities.git.xǁLocalRepositoryProviderǁdelete_repository__*",
        "activities.git.xǁLocalRepositoryProviderǁ_create__*",
        "activities.git.xǁLocalRepositoryProviderǁ_discard_creating__*",
        "activities.git.xǁLocalRepositoryProviderǁ_check_owned_by__*",
        "activities.git.xǁ_ScratchDirectoryǁ*",
        "activities.git.x__rendered_path__*",
    ],
    "workflow step guards (workflows/project_init.py)": [
        "workflows.project_init.xǁProvisioningRunǁ_provision__*",
        "workflows.project_init.xǁProvisioningRunǁ_roll_back__*",
        "workflows.project_init.xǁProvisioningRunǁ_mirror_in_record__*",
    ],
}
KILLED = {"killed", "timeout", "caught by type check"}
NOT_RUN = "not checked"  # a run stopped (or limited by --area) before it reached the mutant
RESULT_LINE = re.compile(r"^\s*(?P<name>\S+__mutmut_\d+): (?P<status>.+)$")


@dataclass(frozen=True)
class Equivalent:
    function: str  # the mutant name without __mutmut_N
    mutated: str  # the mutated line(s), as `mutmut show` prints them after "+"
    reason: str
    original: str = ""  # the line(s) it replaces (after "-"): only where `mutated` alone names more than one mutant

    def matches(self, function: str, added: str, removed: str) -> bool:
        return (
            self.function == function
            and _code(self.mutated) == added
            and (not self.original or _code(self.original) == removed)
        )


@dataclass
class AreaScore:
    area: str
    mutants: int = 0
    killed: int = 0
    not_run: int = 0
    equivalent: list[tuple[str, str, str]] = field(default_factory=list)  # (name, diff, reason)
    survived: list[tuple[str, str, str]] = field(default_factory=list)  # (name, diff, status)

    @property
    def score(self) -> float:
        """Killed out of the mutants that ran and are not equivalent."""
        deciding = self.mutants - self.not_run - len(self.equivalent)
        return self.killed / deciding if deciding else 1.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.splitlines()[0])
    parser.add_argument("--reuse", action="store_true", help="keep mutants/ and the results it holds")
    parser.add_argument("--report", action="store_true", help="print the last run's table, run nothing")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--area", action="append", help="only the areas whose names contain this (repeatable)")
    options = parser.parse_args(argv)
    areas = {name: p for name, p in AREAS.items() if not options.area or any(a in name for a in options.area)}
    if not areas:
        parser.error(f"no area matches {options.area}; the areas: {', '.join(AREAS)}")
    os.chdir(ROOT)
    if not options.report:
        if not options.reuse:
            shutil.rmtree(ROOT / "mutants", ignore_errors=True)
        patterns = [pattern for patterns in areas.values() for pattern in patterns]
        subprocess.run(
            [str(MUTMUT), "run", "--max-children", str(options.max_children), *patterns],
            check=True,
            stdout=subprocess.DEVNULL,  # its progress spinner; the table below is the result
        )
    scores = score_areas(areas, read_results(), load_equivalents())
    print_report(scores)
    return 0 if all(score.score >= TARGET and not score.not_run for score in scores) else 1


def read_results() -> dict[str, str]:
    listing = subprocess.run(
        [str(MUTMUT), "results", "--all", "true"], check=True, capture_output=True, text=True
    ).stdout
    return {m["name"]: m["status"] for line in listing.splitlines() if (m := RESULT_LINE.match(line))}


def load_equivalents() -> list[Equivalent]:
    document = tomllib.loads(EQUIVALENTS_FILE.read_text(encoding="utf-8"))
    return [Equivalent(**entry) for entry in document.get("equivalent", [])]


def mutated_lines(name: str) -> tuple[str, str, str]:
    """The mutant's diff, its added and its removed lines, whitespace-normalised (how equivalent.toml names a
    mutation)."""
    # `mutmut show` can exit 1 after printing the diff (a crash in its own epilogue): the diff is what counts.
    diff = subprocess.run([str(MUTMUT), "show", name], check=False, capture_output=True, text=True).stdout
    lines = diff.splitlines()
    changed = [line for line in lines if line.startswith(("-", "+")) and not line.startswith(("---", "+++"))]
    added = _code("\n".join(line[1:] for line in changed if line.startswith("+")))
    removed = _code("\n".join(line[1:] for line in changed if line.startswith("-")))
    return "\n".join(changed), added, removed


def _code(lines: str) -> str:
    """The lines' code, without comments, whitespace-normalised: how a mutation is named and compared."""
    return " ".join(" ".join(_code_of(line) for line in lines.splitlines()).split())


def _code_of(line: str) -> str:
    """A source line without its comment, which says nothing about the mutation (and may change with no mutant)."""
    code = line.strip()
    try:
        for token in tokenize.generate_tokens(io.StringIO(code).readline):
            if token.type == tokenize.COMMENT:
                return code[: token.start[1]]
    except (tokenize.TokenError, SyntaxError):  # a line of a longer statement: its tokens so far were read
        pass
    return code


def score_areas(
    areas: dict[str, list[str]], results: dict[str, str], equivalents: list[Equivalent]
) -> list[AreaScore]:
    scores = []
    for area, patterns in areas.items():
        score = AreaScore(area)
        for name, status in sorted(results.items()):
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
                continue
            score.mutants += 1
            if status in KILLED:
                score.killed += 1
                continue
            if status == NOT_RUN:
                score.not_run += 1
                continue
            diff, added, removed = mutated_lines(name)
            function = name.rsplit("__mutmut_", 1)[0]
            reason = next((e.reason for e in equivalents if e.matches(function, added, removed)), None)
            if reason is None:
                score.survived.append((name, diff, status))
            else:
                score.equivalent.append((name, diff, reason))
        scores.append(score)
    return scores


def print_report(scores: list[AreaScore]) -> None:
    header = f"{'area':<50} {'mutants':>7} {'not run':>7} {'killed':>7} {'equiv.':>7} {'survived':>8} {'score':>7}"
    print(header)
    print("-" * len(header))
    for s in scores:
        flag = "" if s.score >= TARGET else "  < target"
        print(
            f"{s.area:<50} {s.mutants:>7} {s.not_run:>7} {s.killed:>7} {len(s.equivalent):>7} {len(s.survived):>8} "
            f"{s.score:>6.1%}{flag}"
        )
    total = AreaScore("all areas")
    for s in scores:
        total.mutants += s.mutants
        total.killed += s.killed
        total.not_run += s.not_run
        total.equivalent += s.equivalent
        total.survived += s.survived
    print(
        f"{total.area:<50} {total.mutants:>7} {total.not_run:>7} {total.killed:>7} {len(total.equivalent):>7} "
        f"{len(total.survived):>8} {total.score:>6.1%}"
    )
    print(f"\ntarget: at least {TARGET:.0%} of the non-equivalent mutants killed in every area")
    if total.not_run:
        print(f"INCOMPLETE: {total.not_run} mutants did not run; their areas' scores cover only the ones that did")
    for s in scores:
        for name, diff, reason in s.equivalent:
            print(f"\nequivalent  {name}\n{_indent(diff)}\n    why: {reason}")
    for s in scores:
        for name, diff, status in s.survived:
            print(f"\nSURVIVED ({status}): a test is missing  {name}\n{_indent(diff)}")


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


if __name__ == "__main__":
    sys.exit(main())
