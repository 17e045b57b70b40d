"""Every code example in docs/ (and README.md) runs as written, offline, on tiny models.

Each fenced block says what it is in its info string, and the test does what that says:

    ```python             run; a page's blocks share one namespace, in order, in a temp folder
    ```python no-run: WHY  compiled only (needs the real SmolLM2, the hub or a GPU); WHY is required
    ```cot                checked (`cotdsl check`: an experiment, or a library of declarations)
    ```cot fragment       checked inside an experiment that declares what the fragment does not
                          (data, teacher, student, targets none/before/after/shuffled/masked[p])
    ```sh                 `cotdsl check|plan|fmt ...` lines run from the repository root
                          (`fmt --write` never); other commands are shown, not run
    ```toml               parsed
    ```text               output, layouts, diagrams: not code

A python block whose first line is `# some/file.py` is also that file: it is written into the
temp folder (on sys.path) before the page runs, so specs on the page can `plugin` it.
"""
from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
KINDS = ("python", "python no-run", "cot", "cot fragment", "sh", "toml", "text")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>.*)$")
FILE_LINE = re.compile(r"^#\s*(?P<path>[\w./-]+\.py)\b")

FRAGMENT = """experiment doc {{
  seeds 0
{decls}
{body}
}}
"""
DEFAULTS = {  # what a fragment gets unless it declares that kind itself
    "data": '  data toy = builtin("facts", train: 16, test: 8)',
    "teacher": "  teacher gold = gold",
    "student": "  student smol = smollm2",
    "target": "\n".join(["  target none = label", "  target before = rationale -> label",
                         "  target after = label -> rationale", "  target shuffled = label -> shuffle(rationale)",
                         "  target masked[p in 0.2, 0.8] = label -> mask(rationale, p)"]),
    "probe": "  probe { lens: logit }",
}


def _hub_files(tmp: Path) -> None:
    """data.md reads CSQA, OBQA and QuaRel rows in the hub's schemas from local files: the
    fixtures as jsonl, parquet and a `DatasetDict.save_to_disk` folder's metadata (what the
    checker reads of it)."""
    import json

    import pyarrow.json as pj
    import pyarrow.parquet as pq

    fx = ROOT / "tests" / "fixtures"
    (tmp / "data" / "csqa").mkdir(parents=True)
    for split in ("train", "validation"):
        shutil.copy(fx / "csqa.jsonl", tmp / "data" / "csqa" / f"{split}.jsonl")
    (tmp / "obqa").mkdir()
    for split in ("train", "test"):
        pq.write_table(pj.read_json(fx / "obqa_main.jsonl"), tmp / "obqa" / f"{split}.parquet")
    hub = tmp / "quarel_hub"
    row = json.loads((fx / "quarel.jsonl").read_text().splitlines()[0])
    features = {k: {"dtype": "int64" if isinstance(v, int) else "string", "_type": "Value"}
                for k, v in row.items() if not isinstance(v, list)}
    for split in ("train", "test"):
        (hub / split).mkdir(parents=True)
        (hub / split / "dataset_info.json").write_text(json.dumps({"features": features}))
    (hub / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))


SETUP = {"data.md": _hub_files}  # files a page's examples read, made in its temp folder


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    info: str
    text: str

    @property
    def kind(self) -> str:
        return self.info.split(":", 1)[0].strip()

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    out, lines, i = [], page.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m:
            j = i + 1
            while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
                j += 1
            if j == len(lines):
                raise ValueError(f"{page}:{i + 1}: a ``` fence that is never closed")
            body = textwrap.dedent("\n".join(lines[i + 1:j])) + "\n"
            out.append(Block(page, i + 1, m["info"].strip(), body))
            i = j
        i += 1
    return out


ALL = [b for p in PAGES for b in blocks(p)]


def test_every_block_says_what_it_is():
    bad = [f"{b.where}: ```{b.info}" for b in ALL if b.kind not in KINDS]
    assert not bad, "tag each fenced block with one of " + ", ".join(KINDS) + ":\n" + "\n".join(bad)
    unexplained = [b.where for b in ALL if b.kind == "python no-run" and len(b.info.split(":", 1)[-1].strip()) < 10]
    assert not unexplained, f"```python no-run: say why it cannot run: {unexplained}"
    runnable = sum(b.kind == "python" for b in ALL)
    assert sum(b.kind == "python no-run" for b in ALL) <= runnable // 4, "no-run blocks are the exception"


def _fragment(text: str) -> str:
    declared = {m.group(1) for m in re.finditer(r"^\s*(data|teacher|student|target|probe)\b", text, re.M)}
    decls = "\n".join(v for k, v in DEFAULTS.items() if k not in declared)
    return FRAGMENT.format(decls=decls, body=textwrap.indent(text.rstrip(), "  "))


def _check_cot(b: Block, tmp: Path) -> None:
    from cotdsl.errors import CotError
    from cotdsl.lang import check_source

    text = _fragment(b.text) if b.kind == "cot fragment" else b.text
    try:
        check_source(text, str(tmp / f"{b.page.stem}-{b.line}.cot"), library=True)
    except CotError as e:
        pytest.fail(f"{b.where}: the spec does not check:\n{e.render()}\n--- as checked:\n{text}")


def _run_sh(b: Block) -> int:
    from cotdsl.cli import app

    ran = 0
    for line in b.text.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if len(argv) < 2 or Path(argv[0]).name != "cotdsl" or argv[1] not in ("check", "plan", "fmt"):
            continue
        if "--write" in argv or "-w" in argv:
            continue
        r = CliRunner().invoke(app, argv[1:])
        assert r.exit_code == 0, f"{b.where}: `{line.strip()}` exited {r.exit_code}:\n{r.output}"
        ran += 1
    return ran


def _run_python(b: Block, ns: dict) -> None:
    try:
        exec(compile(b.text, f"{b.where} (```python)", "exec"), ns)
    except Exception as e:
        import traceback

        pytest.fail(f"{b.where}: the example fails: {type(e).__name__}: {e}\n"
                    + "".join(traceback.format_exception(e)[-6:]))


@pytest.fixture
def sandbox(plugin_dir, monkeypatch):
    """The temp folder (on sys.path; tests/conftest.py restores the perturbation registry and the
    modules imported from it) as cwd, with specs/ and specs/lib as lib/."""
    shutil.copytree(ROOT / "specs", plugin_dir / "specs")  # pages speak from the repository root
    shutil.copytree(ROOT / "specs" / "lib", plugin_dir / "lib")  # and specs on a page import lib/
    monkeypatch.chdir(plugin_dir)
    return plugin_dir


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page(page, sandbox, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    page_blocks = blocks(page)
    if page.name in SETUP:
        SETUP[page.name](sandbox)
    for b in page_blocks:  # files first: a spec above may `plugin` a module shown below it
        m = FILE_LINE.match(b.text) if b.kind.startswith("python") else None
        if m:
            (sandbox / m["path"]).parent.mkdir(parents=True, exist_ok=True)
            (sandbox / m["path"]).write_text(b.text)
    importlib.invalidate_caches()
    ns: dict = {"__name__": f"doc_{page.stem}"}
    for b in page_blocks:
        if b.kind == "python":
            _run_python(b, ns)
        elif b.kind == "python no-run":
            compile(b.text, b.where, "exec")
        elif b.kind.startswith("cot"):
            _check_cot(b, sandbox)
        elif b.kind == "toml":
            tomllib.loads(b.text)
        elif b.kind == "sh":
            cwd = os.getcwd()
            os.chdir(ROOT)
            try:
                _run_sh(b)
            finally:
                os.chdir(cwd)
