"""`cotdsl lsp`: a language server for .cot files (pygls, over stdin/stdout).

    server.py    LSP wiring: documents, diagnostics, hover, completion, definition (pygls)
    analysis.py  the answers, as functions of a document's text: the checker's diagnostics, and
                 hover/completion/definition from the highlighter's tokens (cotdsl.lang.highlight)
    docs.py      hover and completion text: the perturbation registry and the section tables

Like `cotdsl check`, it imports no torch: only the language front end.
"""
