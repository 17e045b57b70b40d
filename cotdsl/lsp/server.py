"""The pygls server behind `cotdsl lsp`: LSP messages in, `analysis` answers out.

On open, change and save of a `.cot` document it publishes the checker's diagnostics; it answers
hover, completion and go-to-definition requests. Positions cross here: the client speaks
lines and UTF-16 units (or what it negotiated), `analysis` offsets into the document's text.
"""
from __future__ import annotations

import os

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path
from pygls.workspace import TextDocument

import cotdsl

from . import analysis

KINDS = {"function": lsp.CompletionItemKind.Function, "class": lsp.CompletionItemKind.Class,
         "variable": lsp.CompletionItemKind.Variable, "property": lsp.CompletionItemKind.Property,
         "value": lsp.CompletionItemKind.EnumMember, "field": lsp.CompletionItemKind.Field,
         "keyword": lsp.CompletionItemKind.Keyword}

def _path(doc: TextDocument) -> str:
    return doc.path or "<untitled>"


def _range(doc: TextDocument, start: int, end: int) -> lsp.Range:
    return lsp.Range(doc.client_position_at_offset(start), doc.client_position_at_offset(end))


def _markdown(text: str) -> lsp.MarkupContent:
    return lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=text)


def publish(ls: LanguageServer, uri: str) -> None:
    doc = ls.workspace.get_text_document(uri)
    found = [lsp.Diagnostic(range=_range(doc, p.start, p.end), message=p.message, source="cotdsl",
                            severity=lsp.DiagnosticSeverity.Error)
             for p in analysis.problems(doc.source, _path(doc))]
    ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=uri, diagnostics=found,
                                                                      version=doc.version))


def did_open(ls: LanguageServer, params: lsp.DidOpenTextDocumentParams) -> None:
    publish(ls, params.text_document.uri)


def did_change(ls: LanguageServer, params: lsp.DidChangeTextDocumentParams) -> None:
    publish(ls, params.text_document.uri)


def did_save(ls: LanguageServer, params: lsp.DidSaveTextDocumentParams) -> None:
    publish(ls, params.text_document.uri)  # an imported file may have changed on disk


def did_close(ls: LanguageServer, params: lsp.DidCloseTextDocumentParams) -> None:
    ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=params.text_document.uri,
                                                                      diagnostics=[]))


def hover(ls: LanguageServer, params: lsp.HoverParams) -> lsp.Hover | None:
    doc = ls.workspace.get_text_document(params.text_document.uri)
    found = analysis.hover(doc.source, _path(doc), doc.offset_at_position(params.position))
    if found is None:
        return None
    text, start, end = found
    return lsp.Hover(contents=_markdown(text), range=_range(doc, start, end))


def completion(ls: LanguageServer, params: lsp.CompletionParams) -> lsp.CompletionList:
    doc = ls.workspace.get_text_document(params.text_document.uri)
    items = analysis.complete(doc.source, _path(doc), doc.offset_at_position(params.position))
    return lsp.CompletionList(is_incomplete=False, items=[
        lsp.CompletionItem(label=i.label, kind=KINDS[i.kind], detail=i.detail or None,
                           documentation=_markdown(i.doc) if i.doc else None) for i in items])


def definition(ls: LanguageServer, params: lsp.DefinitionParams) -> lsp.Location | None:
    doc = ls.workspace.get_text_document(params.text_document.uri)
    found = analysis.definition(doc.source, _path(doc), doc.offset_at_position(params.position))
    if found is None:
        return None
    same = os.path.abspath(found.path) == os.path.abspath(_path(doc))
    uri = params.text_document.uri if same else from_fs_path(found.path)
    target = doc if uri == params.text_document.uri else ls.workspace.get_text_document(uri)
    return lsp.Location(uri=uri, range=_range(target, found.start, found.end))


def make_server() -> LanguageServer:
    """A fresh server with every feature registered (one per connection)."""
    ls = LanguageServer("cotdsl", cotdsl.__version__)
    for method, fn in ((lsp.TEXT_DOCUMENT_DID_OPEN, did_open), (lsp.TEXT_DOCUMENT_DID_CHANGE, did_change),
                       (lsp.TEXT_DOCUMENT_DID_SAVE, did_save), (lsp.TEXT_DOCUMENT_DID_CLOSE, did_close),
                       (lsp.TEXT_DOCUMENT_HOVER, hover), (lsp.TEXT_DOCUMENT_DEFINITION, definition)):
        ls.feature(method)(fn)
    ls.feature(lsp.TEXT_DOCUMENT_COMPLETION, lsp.CompletionOptions(trigger_characters=[":", "{", "(", ";"]))(completion)
    return ls


def serve() -> None:
    """Talk LSP over stdin/stdout until the client says exit."""
    make_server().start_io()
