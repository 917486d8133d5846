# The two commands: `make book` and `make test`. Each creates/updates .venv itself.
#
# torch: on a CPU-only machine the pinned CPU wheel below is installed. A GPU user who already
# has a CUDA build of torch in the environment keeps it: torch is only installed when
# `import torch` fails (or pass TORCH="torch==X.Y.Z" to choose).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.dspa-installed
export PYTHONUNBUFFERED := 1

.PHONY: book test setup toy lint unit chapters browser clean help

help:
	@echo "make book   build the toy world (once) and the executed book into _build/html"
	@echo "make test   ruff, unit tests with doctests, every chapter under nbmake, the browser check"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[book,dev,eval]"
	$(PY) -m ipykernel install --prefix $(VENV) --name python3 >/dev/null
	touch $(STAMP)

setup: $(STAMP)

toy: setup
	$(VENV)/bin/dspa-lite build-toy

book: toy
	rm -rf _build/html _build/.doctrees _build/jupyter_execute
	$(VENV)/bin/jupyter-book build . -W --keep-going
	@echo "Book built: $(CURDIR)/_build/html/index.html"

lint: setup
	$(VENV)/bin/ruff check dspa_lite tests benchmarks book

# Two pytest workers with one torch thread each use both cores without oversubscribing them.
PARALLEL := -n 2 --dist loadfile
unit: toy
	OMP_NUM_THREADS=1 $(PY) -m pytest tests --ignore=tests/browser --doctest-modules dspa_lite -q $(PARALLEL)

# `make test` executes every chapter once, under nbmake, in a staged copy of the book, then renders
# that executed copy (execution off) for the browser check: one execution, two checks.
# not under _build: nbmake skips any path containing _build
STAGE := _stage
chapters: toy
	rm -rf $(STAGE) && mkdir -p $(STAGE)
	cp -r book _toc.yml $(STAGE)/
	sed 's/execute_notebooks: force/execute_notebooks: "off"/' _config.yml > $(STAGE)/_config.yml
	OMP_NUM_THREADS=1 $(PY) -m pytest --nbmake --nbmake-timeout=900 --overwrite $(STAGE)/book -q -p no:cacheprovider $(PARALLEL)

browser: chapters
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	$(VENV)/bin/jupyter-book build $(STAGE) -W --keep-going
	BOOK_HTML=$(STAGE)/_build/html $(PY) -m pytest tests/browser -q -p no:cacheprovider

test: lint unit chapters browser

clean:
	rm -rf _build _stage .pytest_cache
