"""Research code of the project, outside the wheel: what the tools, benchmarks and tests use to build
and measure the toy world (docs/design.md §10). The package ``dreamperp`` never imports it
(tests/test_layers.py); it imports ``dreamperp`` freely. Importable from a checkout's root (the tools
put it on ``sys.path``, pytest's ``pythonpath`` does for the tests)."""
