# Each target installs what it needs first (scripts/bootstrap), so they work on a fresh clone.
.PHONY: demo test bench

demo: ## run the image API with two tiny demo models: http://127.0.0.1:8000
	scripts/bootstrap
	.venv/bin/tessera serve --demo

test: ## the whole test suite, exactly as CI runs it
	scripts/test

bench: ## serving overhead of the API over a direct pipeline call
	scripts/bootstrap --test
	.venv/bin/python bench/serving_overhead.py
