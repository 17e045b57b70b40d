"""fmt: canonical, idempotent, meaning-preserving, keeps comments."""
from __future__ import annotations

from pathlib import Path

import pytest

from cotdsl.lang.check import check_source
from cotdsl.lang.fmt import format_source

SPECS = sorted((Path(__file__).resolve().parents[2] / "specs").glob("**/*.cot"))

MESSY = '''# header comment
experiment   e{seeds 0,1
data toy=builtin("facts",train:10,test:10)   # the data
teacher gold=gold
student s=smollm2

  # targets follow
target none=label
target after = label⟶rationale
target lit="So: "label"." rationale
target m[p in 0.2,0.4,k in 1]=label->mask(rationale,p)->keytokens(rationale,k, by: field(highlights))
target sbs = multitask { "a: " : label weight 0.5 ; rationale }
train{epochs:1,lr:5e-5}
probe{lens:logit,tuned;at:label}
# before the end
}
'''


def test_messy_spec_is_formatted_canonically():
    out = format_source(MESSY)
    assert out.startswith("# header comment\nexperiment e {\n  seeds 0, 1\n")
    assert '  data    toy  = builtin("facts", train: 10, test: 10)  # the data' in out
    assert "  target after = label -> rationale" in out and "  target none  = label" in out
    assert "  target lit   = \"So: \" label \".\" rationale" in out
    assert "  target m[p in 0.2, 0.4; k in 1] = label -> mask" in out
    assert "  probe { lens: logit, tuned; at: label }" in out
    assert "\n\n  # targets follow\n" in out and "  # before the end\n}" in out


@pytest.mark.parametrize("src", [MESSY] + [p.read_text() for p in SPECS], ids=["messy"] + [p.name for p in SPECS])
def test_idempotent_and_same_experiment(src):
    once = format_source(src, "/x/specs/t.cot")
    assert format_source(once, "/x/specs/t.cot") == once
    if "experiment" in src and "import" not in src:
        assert check_source(once) == check_source(src)


def test_specs_are_already_canonical():
    for p in SPECS:
        assert format_source(p.read_text(), str(p)) == p.read_text(), p.name


def test_strings_round_trip_escapes():
    src = 'experiment e { target a = "q\\"uote\\\\ \\n é" label }'
    once = format_source(src)
    assert format_source(once) == once
    assert '"q\\"uote\\\\ \\n é"' in once


def test_long_multitask_breaks_over_lines():
    src = ('experiment e { target s = multitask { "a very long prefix for the label task: " : label weight 1.0; '
           '"another long prefix for the rationale task: " : rationale weight 1.0 } }')
    out = format_source(src)
    assert "multitask {\n    \"a very long" in out and format_source(out) == out
