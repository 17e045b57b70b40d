"""Third-party perturbations: a module registered with @perturbation, loaded by name or through
the `cotdsl.perturbations` entry-point group, then used in a render (and in a checked spec)."""
import importlib.metadata
import sys
import textwrap
import uuid

import pytest

from cotdsl import perturb
from cotdsl.errors import CotError
from cotdsl.lang import call
from cotdsl.render import render
from cotdsl.schema import Example, format_prompt
from cotdsl.spec import Condition, Ref, Task
from cotdsl.tiny import train_tokenizer

EX = Example("p1", "Why is ice slippery?", ("water film", "magnets"), 0,
             "A film of liquid water sits on top of the ice surface.")

PLUGIN = '''
from cotdsl.perturb import Param, Perturbation, count_of, perturbation


@perturbation("{name}", params=[Param("frac", float, lo=0.0, hi=1.0, default=0.5)])
def first_half(units, ctx, frac=0.5):
    """Keep the first `frac` of the units (rounded half up). Unit: word."""
    return units[:count_of(frac, len(units))]


def _every_other(units, ctx):
    return units[::2]


# an unregistered Perturbation object, for entry points that name one directly
EVERY_OTHER = Perturbation("{name}_eo", _every_other, ())
'''


# plugin_dir: tests/conftest.py


def write_plugin(d, body=None):
    mod = f"cotplug_{uuid.uuid4().hex[:8]}"
    name = f"first_half_{mod[-4:]}"
    (d / f"{mod}.py").write_text(textwrap.dedent(body or PLUGIN.format(name=name)))
    return mod, name


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([format_prompt(EX) + " " + EX.rationale] * 10, vocab_size=350)


def cond(*segs):
    return Condition("c", "c", (), (Task(tuple(segs)),), "rank")


def test_named_plugin_registers_and_renders(plugin_dir, tok):
    mod, name = write_plugin(plugin_dir)
    assert name not in perturb.REGISTRY
    added = perturb.load_plugins([mod], entry_points=False)
    assert name in added and name in perturb.REGISTRY
    p = perturb.REGISTRY[name]
    assert p.params[0].name == "frac" and (p.params[0].lo, p.params[0].hi) == (0.0, 1.0)
    assert p.doc.startswith("Keep the first")
    words = EX.rationale.split()  # 12 words
    (r,) = render(EX, cond(Ref("label"), call(name, Ref("rationale"))), tok, seed=0)
    assert r.text == format_prompt(EX) + " water film\n" + " ".join(words[:6])
    (r,) = render(EX, cond(Ref("label"), call(name, Ref("rationale"), frac=0.25)), tok, seed=0)
    assert r.text.endswith("\n" + " ".join(words[:3]))
    with pytest.raises(CotError, match="`frac` is a ratio and must be between 0 and 1, got 1.5"):
        call(name, Ref("rationale"), 1.5)  # the plugin's declared range, checked as in a spec
    # loading again is harmless (already imported)
    assert perturb.load_plugins([mod], entry_points=False) == []


def test_broken_and_missing_plugins_name_the_plugin(plugin_dir):
    mod, _ = write_plugin(plugin_dir, "raise RuntimeError('boom at import')\n")
    with pytest.raises(CotError, match=f"plugin '{mod}' failed to import: RuntimeError: boom at import"):
        perturb.load_plugins([mod], entry_points=False)
    with pytest.raises(CotError, match="plugin 'no_such_cot_plugin' failed to import: ModuleNotFoundError"):
        perturb.load_plugins(["no_such_cot_plugin"], entry_points=False)


def _fake_entry_points(monkeypatch, eps):
    real = importlib.metadata.entry_points

    def fake(**kw):
        if kw.get("group") == perturb.ENTRY_POINT_GROUP:
            return importlib.metadata.EntryPoints(eps)
        return real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)


def test_entry_point_group_loads_modules_and_objects(plugin_dir, monkeypatch, tok):
    mod, name = write_plugin(plugin_dir)
    g = perturb.ENTRY_POINT_GROUP
    _fake_entry_points(monkeypatch, [importlib.metadata.EntryPoint("half", mod, g),
                                     importlib.metadata.EntryPoint("eo", f"{mod}:EVERY_OTHER", g)])
    added = perturb.load_plugins([])
    assert set(added) == {name, f"{name}_eo"}
    (r,) = render(EX, cond(Ref("label"), call(f"{name}_eo", Ref("rationale"))), tok, seed=0)
    assert r.text.endswith("\n" + " ".join(EX.rationale.split()[::2]))


def test_broken_entry_point_is_a_cot_error(plugin_dir, monkeypatch):
    _fake_entry_points(monkeypatch, [importlib.metadata.EntryPoint("bad", "no_such_mod_xyz:thing",
                                                                   perturb.ENTRY_POINT_GROUP)])
    with pytest.raises(CotError, match="entry point 'bad'.*no_such_mod_xyz"):
        perturb.load_plugins([])


def test_plugin_used_in_a_checked_spec(plugin_dir):
    check = pytest.importorskip("cotdsl.lang.check")
    mod, name = write_plugin(plugin_dir)
    src = f'''
    plugin "{mod}"
    experiment plug {{
      seeds 0
      data toy = builtin("facts", train: 8, test: 4)
      teacher g = gold
      student s = tiny(arch: "llama")
      target half = label -> {name}(rationale)
      target part[f in 0.25, 0.75] = label -> {name}(rationale, f)
    }}
    '''
    exp = check.check_source(textwrap.dedent(src), "plug.cot")
    assert exp.plugins == (mod,)
    calls = {c.name: c.tasks[0].segments[1] for c in exp.conditions}
    assert calls["half"].fn == name and len(calls) == 3
    # a bad argument to the plugin's perturbation is caught by the checker, with its position
    with pytest.raises(CotError, match="frac|1.5|range|\\[0"):
        check.check_source(textwrap.dedent(src).replace("0.75", "1.5"), "plug.cot")


@pytest.fixture()
def isolated():
    """REGISTRY, sys.modules and sys.path restored afterwards (nothing is put on sys.path)."""
    saved, mods, path = dict(perturb.REGISTRY), set(sys.modules), list(sys.path)
    yield
    perturb.REGISTRY.clear()
    perturb.REGISTRY.update(saved)
    for m in set(sys.modules) - mods:
        del sys.modules[m]
    sys.path[:] = path


def test_plugin_next_to_the_spec_is_found_recorded_and_reimportable(tmp_path, isolated):
    from cotdsl.lang import load
    from cotdsl.perturb import import_plugins

    specs = tmp_path / "specs"
    (specs / "lib").mkdir(parents=True)
    mod, name = write_plugin(specs)  # a module beside the spec, not on PYTHONPATH
    pkg = f"cotpkg_{uuid.uuid4().hex[:8]}"  # a package beside an imported library
    (specs / "lib" / pkg).mkdir()
    (specs / "lib" / pkg / "__init__.py").write_text("")
    sub, sub_name = write_plugin(specs / "lib" / pkg)
    (specs / "lib" / "common.cot").write_text(f'plugin "{pkg}.{sub}"\ndata toy = builtin("facts", train: 8, test: 4)\n')
    (specs / "x.cot").write_text(f'import "lib/common.cot"\nplugin "{mod}"\nexperiment x {{\n  teacher g = gold\n'
                                 f'  student s = tiny()\n  target a = label -> {name}(rationale)\n'
                                 f'  target b = label -> {sub_name}(rationale, 0.25)\n}}\n')
    path_before = list(sys.path)
    exp = load(specs / "x.cot")
    assert sys.path == path_before  # the spec's folder was only searched while importing
    assert exp.plugins == (f"{pkg}.{sub}", mod)
    assert exp.plugin_paths == (str(specs / "lib"), str(specs))
    # a worker process starts without them: import_plugins finds them again from the record
    for m in (mod, f"{pkg}.{sub}", pkg):
        del sys.modules[m]
    del perturb.REGISTRY[name], perturb.REGISTRY[sub_name]
    assert set(import_plugins(exp)) == {name, sub_name} and sys.path == path_before
