# The two commands a newcomer runs (see README): `make demo` and `make test`.
.PHONY: setup demo test test-slow bench

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/dmtoolkit demo

test:
	bash scripts/setup.sh chromium
	bash scripts/test.sh

test-slow: setup
	.venv/bin/pytest -m slow
