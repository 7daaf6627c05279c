# Set-up and the main jobs. Every target creates .venv and installs the project if needed (tools/install.py:
# with uv where it can be had, with pip otherwise).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
RUN    ?= runs/digits

.PHONY: install run test test-slow lint sigma-sweep compare benchmarks benchmarks-gpu mnist-nll m2 cvae conditional examples priors-table priors-ablation clean

$(STAMP): pyproject.toml
	. tools/pip-env.sh && $(PYTHON) tools/install.py $(VENV) '.[test]'
	$(PY) -c "import ppl_vae.models, ppl_vae.guides, pytest, hypothesis, xdist"
	touch $(STAMP)

install: $(STAMP)

## make run: train the canonical VAE on the embedded digits data, then run the workflow analysis
run: $(STAMP)
	$(VENV)/bin/ppl-vae fit --out $(RUN) --overwrite
	$(VENV)/bin/ppl-vae evaluate $(RUN)
	@sed -n '/^## Summary/,/^## Figures/{/^## Figures/!p;}' $(RUN)/report.md
	@echo "report: $(RUN)/report.md (and report.html)"

## make test: the whole suite, a file per worker on two workers, longest files first (tests/conftest.py), the 15
## slowest tests named at the end;
## make test-slow: the long statistical runs marked slow
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

## make lint: ruff's linter and formatter check (also a test in tests/ppl_vae/test_packaging.py)
lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

## make sigma-sweep: the "Why MSE?" numbers and figures, embedded into README.md (docs/sigma-sweep);
## the same command on the same machine and versions writes the same bytes (tests/ppl_vae/studies/test_readme_sweep.py)
## one torch thread: parallel sums are split by the thread count, so one thread gives the same table on any
## number of cores (and the sweep's small networks gain little from more)
SWEEP ?= runs/sigma-sweep
SWEEP_ARGS := --sigmas 0.03,0.05,0.1,0.2,0.4 --latent-dim 16
SWEEP_THREADS := 1
sigma-sweep: $(STAMP)
	OMP_NUM_THREADS=$(SWEEP_THREADS) $(VENV)/bin/ppl-vae sigma-sweep $(SWEEP_ARGS) --out $(SWEEP)
	$(PY) docs/embed_sweep.py $(SWEEP)

## make sigma-sweep-frey: the same on Frey Face (the AEVB paper's Gaussian-decoder data), where ../shared/data has it
SWEEP_FREY ?= runs/sigma-sweep-frey
sigma-sweep-frey: $(STAMP)
	OMP_NUM_THREADS=$(SWEEP_THREADS) $(VENV)/bin/ppl-vae sigma-sweep --data frey $(SWEEP_ARGS) --out $(SWEEP_FREY)
	$(PY) docs/embed_sweep.py $(SWEEP_FREY) sigma-sweep-frey

## make compare: guides x priors on digits, ranked by held-out log p(x)
compare: $(STAMP)
	$(VENV)/bin/ppl-vae compare --grid 'guide=diagonal,iaf;prior=standard,vamp' --out runs/compare

## make benchmarks: speed and memory against hand-written references (see BENCHMARKS.md)
benchmarks: $(STAMP)
	cd benchmarks && ../$(PY) train_speed.py && ../$(PY) eval_speed.py && ../$(PY) mmap_memory.py

## make mnist-nll: test NLL of the diagonal and IAF guides on binarized MNIST (~1.5 h on two cores)
mnist-nll: $(STAMP)
	cd benchmarks && ../$(PY) mnist_nll.py

## make priors-table: the VampPrior paper's priors at its authors' protocol on dynamic MNIST and Caltech 101
## Silhouettes (hours; resumable); make priors-ablation: the VampPrior row on Caltech from the first protocol,
## one of the authors' settings at a time
PRIORS_ARGS ?= --protocol paper --epochs-mnist 40 --epochs-caltech 2000 --results results/priors_table.json
priors-table: $(STAMP)
	cd benchmarks && OMP_NUM_THREADS=1 nice -n 19 ../$(PY) priors_table.py $(PRIORS_ARGS) --resume

priors-ablation: $(STAMP)
	cd benchmarks && OMP_NUM_THREADS=1 nice -n 19 ../$(PY) priors_table.py --data caltech101 --rows vamp \
		--ablation ours ours+warmup ours+constant-lr ours+min-epochs ours+adamnormgrad ours+he-init ours+pseudo-init \
		--epochs-caltech 300 --k 1000 --jobs 1 --results results/priors_table.json --resume

## make benchmarks-gpu: the training-speed comparison on CUDA (benchmarks/gpu_check.sh)
benchmarks-gpu: $(STAMP)
	bash benchmarks/gpu_check.sh

## The examples of "Your own programs" (README) on MNIST; DATA_ROOT=dir/with/mnist.npz where ../shared/data has none
DATA_ROOT ?=
MNIST := --data mnist $(if $(DATA_ROOT),--data-root $(DATA_ROOT),)
M2_EPOCHS ?= 50
CVAE_EPOCHS ?= 30
COND_EPOCHS ?= 30

## make m2: semi-supervised M2 with 3000 labels (examples/ss_vae_m2.py): test accuracy and log p(x)
m2: $(STAMP)
	$(VENV)/bin/ppl-vae fit --model examples/ss_vae_m2.py:m2 $(MNIST) --labels 3000 --elbo traceenum \
		--latent-dim 50 --batch-size 200 --lr 0.0004 --epochs $(M2_EPOCHS) --out runs/m2 --overwrite
	$(VENV)/bin/ppl-vae evaluate runs/m2 --trust-program --k 100 --gap-points 20 --sbc-simulations 200

## make cvae: quadrant completion, the CVAE against the deterministic regressor of the same width (examples/quadrants)
cvae: $(STAMP)
	$(VENV)/bin/ppl-vae compare --variants examples/quadrants/*.toml $(if $(DATA_ROOT),--data-root $(DATA_ROOT),) \
		--epochs $(CVAE_EPOCHS) --k 100 --gap-points 20 --sbc-simulations 200 --out runs/quadrants

## make conditional: the class-conditional generator (examples/conditional_vae.py): samples of every class
conditional: $(STAMP)
	$(VENV)/bin/ppl-vae fit --model examples/conditional_vae.py:conditional $(MNIST) --labels all --latent-dim 16 \
		--epochs $(COND_EPOCHS) --out runs/conditional --overwrite
	$(VENV)/bin/ppl-vae evaluate runs/conditional --trust-program --k 100 --gap-points 20 --sbc-simulations 200

examples: m2 cvae conditional

clean:
	rm -rf runs build dist *.egg-info .pytest_cache
