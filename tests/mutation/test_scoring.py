"""How `make test-mutation` judges a survivor: equivalent by its function and code (comments aside), or a missing
test."""

from __future__ import annotations

import pytest

from tests.mutation.__main__ import NOT_RUN, AreaScore, Equivalent, _code, score_areas

FUNCTION = "activities.git.xǁLocalRepositoryProviderǁ_create"
DIFF = {
    f"{FUNCTION}__mutmut_1": ('-    owner = ""  # why\n+    owner = None  # why', "owner = None", 'owner = ""'),
    f"{FUNCTION}__mutmut_2": ("-        object,\n+        None,", "None,", "object,"),
    f"{FUNCTION}__mutmut_3": ("-        record,\n+        None,", "None,", "record,"),
}


@pytest.fixture(autouse=True)
def diffs_without_mutmut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tests.mutation.__main__.mutated_lines", lambda name: DIFF[name])


def test_a_comment_neither_makes_nor_breaks_a_match() -> None:
    assert _code('owner = None  # not a repository, or no (readable) marker') == "owner = None"
    assert _code('text = "a # b"') == 'text = "a # b"'
    assert _code("call(a,  # why\n     b)") == "call(a, b)"
    equivalent = Equivalent(FUNCTION, "owner = None  # another comment", "why")
    assert equivalent.matches(FUNCTION, "owner = None", 'owner = ""')


def test_the_original_line_tells_apart_mutants_with_the_same_mutated_line() -> None:
    equivalent = Equivalent(FUNCTION, "None,", "the result type is ignored", original="object,")
    scores = score_areas({"area": [f"{FUNCTION}__*"]}, dict.fromkeys(DIFF, "survived"), [equivalent])

    [score] = scores
    assert [name for name, _, _ in score.equivalent] == [f"{FUNCTION}__mutmut_2"]
    assert [name for name, _, _ in score.survived] == [f"{FUNCTION}__mutmut_1", f"{FUNCTION}__mutmut_3"]
    assert score.score == 0.0


def test_an_equivalent_of_another_function_does_not_count() -> None:
    elsewhere = Equivalent("activities.git.x__rendered_path", "owner = None", "why")
    [score] = score_areas({"area": [f"{FUNCTION}__*"]}, {f"{FUNCTION}__mutmut_1": "survived"}, [elsewhere])
    assert len(score.survived) == 1 and not score.equivalent


def test_mutants_that_did_not_run_are_counted_apart_and_kept_out_of_the_score() -> None:
    results = {f"{FUNCTION}__mutmut_1": "killed", f"{FUNCTION}__mutmut_2": "timeout", f"{FUNCTION}__mutmut_3": NOT_RUN}
    [score] = score_areas({"area": [f"{FUNCTION}__*"]}, results, [])

    assert (score.mutants, score.killed, score.not_run, score.survived) == (3, 2, 1, [])
    assert score.score == 1.0
    assert AreaScore("empty").score == 1.0
