"""Property: whatever the input, `check_source` returns an Experiment or raises CotError and
nothing else (generated specs from the grammar's pieces, byte-level mutations of real ones, any text
or bytes: the strategies of fuzz_specs.py, which bench/fuzz_check.py runs 100,000 times)."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from cotdsl import spec
from cotdsl.lang.check import check_source
from cotdsl.errors import CotError
from fuzz_specs import arbitrary, generated, mutated


def _only_coterror(text):
    try:
        assert isinstance(check_source(text, "fuzz.cot"), spec.Experiment)
    except CotError as e:
        assert e.diagnostics and e.render()


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(generated)
def test_generated_specs(text):
    _only_coterror(text)


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(mutated)
def test_mutated_specs(text):
    _only_coterror(text)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(arbitrary)
def test_arbitrary_text_and_bytes(data):
    _only_coterror(data)
