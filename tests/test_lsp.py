"""`cotdsl lsp` through the protocol: a pygls client and the server (`cotdsl.lsp.server`) in this
process, joined by two pipes, exchanging real LSP messages (initialize, didOpen/didChange ->
publishDiagnostics, hover, completion, definition, shutdown/exit)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("pygls")
from lsprotocol import types as lsp  # noqa: E402
from pygls.io_ import StdinAsyncReader, StdoutWriter, run_async  # noqa: E402
from pygls.lsp.client import LanguageClient  # noqa: E402
from pygls.uris import from_fs_path  # noqa: E402

from cotdsl.lsp.server import make_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = """import "lib/common.cot"
experiment demo {
  target after = label -> shufle(rationale)
  target masked[p in 0.2, 0.4] = label -> mask(rationale, p)
  train { epochs: 1, lr: 1e-4 }
  probe { lens: logit; patch: none -> after }
  expect after > none
}
"""


@contextlib.asynccontextmanager
async def connected():
    """(client, diagnostics by uri, an Event per publish) after initialize; shut down after."""
    c2s_r, c2s_w = os.pipe()
    s2c_r, s2c_w = os.pipe()
    server = make_server()
    thread = threading.Thread(target=server.start_io, args=(os.fdopen(c2s_r, "rb"), os.fdopen(s2c_w, "wb")),
                              daemon=True)
    thread.start()
    client = LanguageClient("test", "0")
    published: dict[str, list[lsp.Diagnostic]] = {}
    arrived = asyncio.Queue()

    @client.feature(lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    def _diagnostics(params: lsp.PublishDiagnosticsParams):
        published[params.uri] = params.diagnostics
        arrived.put_nowait(params.uri)

    to_server = os.fdopen(c2s_w, "wb")
    client.protocol.set_writer(StdoutWriter(to_server))
    loop_task = asyncio.create_task(run_async(threading.Event(), StdinAsyncReader(os.fdopen(s2c_r, "rb")),
                                              client.protocol))
    result = await client.initialize_async(lsp.InitializeParams(capabilities=lsp.ClientCapabilities(),
                                                                process_id=os.getpid()))
    client.initialized(lsp.InitializedParams())
    try:
        yield client, published, arrived, result
    finally:
        await client.shutdown_async(None)
        client.exit(None)
        to_server.close()
        await asyncio.wait_for(loop_task, 10)
        thread.join(10)
        assert not thread.is_alive()


def _open(client, path: Path, text: str) -> str:
    uri = from_fs_path(str(path))
    client.text_document_did_open(lsp.DidOpenTextDocumentParams(
        text_document=lsp.TextDocumentItem(uri=uri, language_id="cot", version=1, text=text)))
    return uri


def _asker(client, uri: str, method: str, params: type):
    """ask(line, character): the `textDocument/<method>` request at that position."""
    async def ask(line: int, char: int):
        return await getattr(client, f"text_document_{method}_async")(params(
            text_document=lsp.TextDocumentIdentifier(uri=uri), position=lsp.Position(line, char)))
    return ask


async def _next(arrived: asyncio.Queue, uri: str) -> None:
    while await asyncio.wait_for(arrived.get(), 30) != uri:
        pass


def _spec(tmp_path: Path) -> Path:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "common.cot").write_text((ROOT / "specs/lib/common.cot").read_text())
    return tmp_path / "demo.cot"


def test_diagnostics_on_open_and_change(tmp_path):
    path = _spec(tmp_path)

    async def scenario():
        async with connected() as (client, published, arrived, result):
            assert result.capabilities.hover_provider and result.capabilities.definition_provider
            uri = _open(client, path, SPEC)
            await _next(arrived, uri)
            (d,) = published[uri]
            assert d.range == lsp.Range(lsp.Position(2, 26), lsp.Position(2, 32))  # `shufle`
            assert d.severity == lsp.DiagnosticSeverity.Error
            assert "unknown perturbation `shufle`" in d.message and "hint: did you mean `shuffle`?" in d.message
            # a second error: every error of the file is published, each at its own place
            text = SPEC.replace("shufle", "shuffle").replace("lr: 1e-4", "lr: -1").replace("epochs: 1", "epoch: 1")
            client.text_document_did_change(lsp.DidChangeTextDocumentParams(
                text_document=lsp.VersionedTextDocumentIdentifier(uri=uri, version=2),
                content_changes=[lsp.TextDocumentContentChangeWholeDocument(text=text)]))
            await _next(arrived, uri)
            got = sorted((d.range.start.line, d.range.start.character, d.range.end.character, d.message.split("\n")[0])
                         for d in published[uri])
            assert got == [(4, 10, 15, "unknown key `epoch` in `train`"),
                           (4, 24, 26, "`train`: `lr` must not be negative, got -1")]
            fixed = text.replace("epoch:", "epochs:").replace("lr: -1", "lr: 1e-4")
            client.text_document_did_change(lsp.DidChangeTextDocumentParams(
                text_document=lsp.VersionedTextDocumentIdentifier(uri=uri, version=3),
                content_changes=[lsp.TextDocumentContentChangeWholeDocument(text=fixed)]))
            await _next(arrived, uri)
            assert list(published[uri]) == []

    asyncio.run(scenario())


def test_an_error_in_an_imported_file_is_shown_on_the_import(tmp_path):
    path = _spec(tmp_path)
    (tmp_path / "lib" / "common.cot").write_text("student smol = smolm2\n")

    async def scenario():
        async with connected() as (client, published, arrived, _):
            uri = _open(client, path, SPEC.replace("shufle", "shuffle"))
            await _next(arrived, uri)
            on_import = [d for d in published[uri] if d.range.start.line == 0]
            assert on_import and on_import[0].range.end.character == len('import "lib/common.cot"')
            assert "common.cot:1:16: unknown student kind `smolm2`" in on_import[0].message

    asyncio.run(scenario())


def _session(tmp_path: Path, text: str, method: str, params: type, check) -> None:
    """Open `text` as demo.cot beside a copy of specs/lib/common.cot, then `await check(ask, uri)`
    with ask(line, character) the `method` request there."""
    path = _spec(tmp_path)

    async def scenario():
        async with connected() as (client, *_):
            uri = _open(client, path, text)
            await check(_asker(client, uri, method, params), uri)

    asyncio.run(scenario())


def test_hover(tmp_path):
    async def check(hover, uri):
        h = await hover(3, 43)  # mask(
        assert h.contents.kind == lsp.MarkupKind.Markdown
        assert "**mask(input, p, token: …)** — perturbation" in h.contents.value
        assert "fraction of units replaced" in h.contents.value  # the parameter's doc
        assert h.range == lsp.Range(lsp.Position(3, 42), lsp.Position(3, 46))
        h = await hover(4, 22)  # lr
        assert "**train** key `lr`: number, > 0, default 5e-05" in h.contents.value
        h = await hover(5, 10)  # lens, an alias
        assert "`lenses` (or `lens`)" in h.contents.value and "logit | tuned" in h.contents.value
        h = await hover(5, 24)  # patch: its comment in spec.ProbeCfg
        assert "activation patching" in h.contents.value
        h = await hover(6, 18)  # none, declared in the imported file
        assert "target none = label" in h.contents.value and "common.cot" in h.contents.value
        assert await hover(1, 0) is None  # `experiment`: nothing to say

    _session(tmp_path, SPEC, "hover", lsp.HoverParams, check)


def test_completion(tmp_path):
    text = SPEC.replace("  train { epochs: 1, lr: 1e-4 }", "  train { epochs: 1,  }\n  eval { by:  }\n  target x = ")

    async def check(ask, uri):
        async def complete(line, char):
            return {i.label: i for i in (await ask(line, char)).items}

        keys = await complete(4, 21)  # after `epochs: 1, `
        assert {"lr", "batch", "lora", "warmup"} <= set(keys) and "shuffle" not in keys
        assert keys["lr"].kind == lsp.CompletionItemKind.Property
        assert (await complete(5, 13)).keys() >= {"auto", "rank", "generate"}  # eval { by: | }
        assert "lr" not in await complete(5, 13)
        anywhere = await complete(6, 13)  # target x = |
        assert {"shuffle", "mask", "keytokens", "unk"} <= set(anywhere)
        assert anywhere["mask"].kind == lsp.CompletionItemKind.Function
        assert anywhere["mask"].detail == "mask(input, p, token: …)"
        assert {"after", "masked", "none", "smol", "toy", "gold"} <= set(anywhere)  # this file's and imported
        assert anywhere["after"].kind == lsp.CompletionItemKind.Class
        assert {"label", "rationale", "target", "expect"} <= set(anywhere)

    _session(tmp_path, text, "completion", lsp.CompletionParams, check)


def test_definition(tmp_path):
    async def check(definition, uri):
        lib = from_fs_path(str(tmp_path / "lib" / "common.cot"))
        assert await definition(0, 12) == lsp.Location(lib, lsp.Range(lsp.Position(0, 0), lsp.Position(0, 0)))
        assert await definition(6, 10) == lsp.Location(uri, lsp.Range(lsp.Position(2, 9), lsp.Position(2, 14)))
        none = await definition(6, 18)  # `none`: declared in the imported file, line 5
        assert none == lsp.Location(lib, lsp.Range(lsp.Position(4, 7), lsp.Position(4, 11)))
        assert await definition(5, 39) == lsp.Location(uri, lsp.Range(lsp.Position(2, 9), lsp.Position(2, 14)))
        assert await definition(2, 19) is None  # `label`: a field, declared nowhere

    _session(tmp_path, SPEC, "definition", lsp.DefinitionParams, check)


def test_the_server_imports_no_torch():
    """Checking a spec through the server's analysis imports no torch (a fresh interpreter)."""
    probe = ("import sys, json; from cotdsl.lsp import analysis, server; "
             f"p = analysis.problems(open({str(ROOT / 'specs/quickstart.cot')!r}).read(), "
             f"{str(ROOT / 'specs/quickstart.cot')!r}); "
             "print(json.dumps([len(p), [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')]]))")
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [0, []]


def test_cli_has_the_command():
    from typer.testing import CliRunner

    from cotdsl.cli import app
    r = CliRunner().invoke(app, ["lsp", "--help"])
    assert r.exit_code == 0 and "language server" in r.output
