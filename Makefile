# `make demo` and `make test` set everything up on first use: a .venv in the repo root, installed with the
# versions pinned in constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
PYTEST_WORKERS ?= 2

.PHONY: test test-slow test-kernels demo pretrain-demo finetune-demo readme-table notebooks clean

$(STAMP): pyproject.toml constraints.txt parity/torchvision_stand_in/pyproject.toml \
          parity/torchaudio_stand_in/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0          # CPU build; any other request downloads the CUDA build
	$(PIP) ./parity/torchvision_stand_in  # no torchvision build loads beside it: see that pyproject.toml
	$(PIP) ./parity/torchaudio_stand_in  # nor a torchaudio build (vit-pytorch's vaat.py): see that pyproject.toml
	$(PIP) -e '.[torch,train,dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -m 'not slow' -q --durations=25

# the slower half: random-configuration sweeps of every architecture against vit-pytorch, registry configurations
# beyond each entry's first, the Extractor on every reachable layer, the multi-device training runs, the benchmark
# harness's smoke run and the slowest objective checks
test-slow: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -m slow -q

# make test's tests (KERNEL_TESTS picks others) on other float32 kernels than this CPU's defaults, as another CPU
# would give: oneDNN limited to AVX2, MKL's compatible code path, ATen's scalar kernels, two torch threads per worker,
# XLA's 512-bit vectors without its Eigen thread pool. The tests judge vit-pytorch by its float64 reference, so they
# pass whatever kernels torch gets (README, Conventions).
KERNEL_TESTS ?= -m 'not slow'
test-kernels: $(STAMP)
	ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=COMPATIBLE ATEN_CPU_CAPABILITY=default TORCH_TEST_THREADS=2 \
	XLA_FLAGS='--xla_cpu_prefer_vector_width=512 --xla_cpu_multi_thread_eigen=false' \
	    $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -q $(KERNEL_TESTS)

# the main job: train on the embedded digits, export to vit-pytorch, check the exported model
demo: $(STAMP)
	rm -rf demo_out/digits
	$(PY) -m vit_flax.train --config=vit_flax/configs/digits.py --workdir=demo_out/digits
	$(PY) -m vit_flax export --workdir=demo_out/digits --out=demo_out/digits.safetensors
	$(PY) -m vit_flax.demo --weights=demo_out/digits.safetensors

# MAE pretraining on the digits, then linear probes and 300-step fine-tunes of the MAE and a fresh encoder
DIGITS := $(PY) -m vit_flax.train --config=vit_flax/configs/digits.py --config.progress_bar=False
pretrain-demo: $(STAMP)
	rm -rf demo_out/mae demo_out/mae_encoder demo_out/finetune_scratch demo_out/finetune_mae
	$(DIGITS) --workdir=demo_out/mae --config.objective=mae --config.total_steps=1000
	$(PY) -m vit_flax export --workdir=demo_out/mae --out=demo_out/mae_encoder.safetensors
	$(PY) -m vit_flax import --weights=demo_out/mae_encoder.safetensors --out=demo_out/mae_encoder
	$(PY) -m vit_flax.probe --workdir=demo_out/mae --random
	$(PY) -m vit_flax.probe --workdir=demo_out/mae
	$(DIGITS) --workdir=demo_out/finetune_scratch --config.total_steps=300 --config.eval_every=300
	$(DIGITS) --workdir=demo_out/finetune_mae --config.total_steps=300 --config.eval_every=300 \
	    --config.init_from=$(CURDIR)/demo_out/mae_encoder

# fine-tuning a timm-layout ViT (pretrained_vit.VisionTransformer) through a timm hub directory, offline: pretrain on
# the digits 0-4 only (written out as an image folder), export the run with --format=timm, then on all ten digits
# with a new 10-class head: the pretrained features under a trained head alone (freeze_backbone: a linear probe,
# the accuracy before fine-tuning), fine-tuned whole with layer-wise learning-rate decay (after), and the same
# model from scratch for as many steps. About 2 minutes on 2 cores.
FT := demo_out/finetune
FT_STEPS := --config.progress_bar=False --config.total_steps=200 --config.eval_every=200
FT_TIMM := $(PY) -m vit_flax.train --config=vit_flax/configs/digits_timm.py $(FT_STEPS)
FT_FINE := $(PY) -m vit_flax.train --config=vit_flax/configs/finetune.py $(FT_STEPS) --config.init_from=$(FT)/timm_hub
finetune-demo: $(STAMP)
	rm -rf $(FT)
	$(PY) -m vit_flax.data digits --out=$(FT)/digits_0to4 --classes=01234
	$(FT_TIMM) --workdir=$(FT)/pretrain_0to4 --config.total_steps=300 \
	    --config.eval_every=300 --config.dataset=image_folder --config.data_dir=$(FT)/digits_0to4 \
	    --config.channels=1 --config.model.num_classes=5
	$(PY) -m vit_flax export --workdir=$(FT)/pretrain_0to4 --out=$(FT)/timm_hub --format=timm
	@echo 'before fine-tuning: a new head on the pretrained features (freeze_backbone)'
	$(FT_FINE) --workdir=$(FT)/linear_probe --config.freeze_backbone=True --config.layer_decay=1.0 \
	    --config.learning_rate=1e-2
	@echo 'after fine-tuning the whole model (layer_decay 0.75)'
	$(FT_FINE) --workdir=$(FT)/fine_tuned --config.learning_rate=3e-3
	@echo 'the same model from scratch, as many steps'
	$(FT_TIMM) --workdir=$(FT)/scratch

readme-table: $(STAMP)
	$(PY) -m parity.readme_table --write README.md

# re-execute the notebooks in place, so the committed files carry fresh outputs and plots (tests/test_notebooks.py
# runs them and checks that the committed copies keep their outputs)
notebooks: $(STAMP)
	$(PY) -m jupyter nbconvert --to notebook --execute --inplace notebooks/*.ipynb

clean:
	rm -rf $(VENV) demo_out .pytest_cache
