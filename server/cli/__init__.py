"""The `callgate` command: `main` (the parser, settings, lists and decisions) and one module per group of
commands (`operator`, `security`, `numbers`, `store`), over one way to reach a server (`rpc`), one to reach
the store on its host (`local`), text helpers (`text`) and the progress line (`progress`).

The top layer: may import the app (for `serve`) and everything below; nothing imports it but the load
tools' progress bar (`progress`).
"""
