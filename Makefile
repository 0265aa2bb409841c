# Build, install and test libmlorc. `make help` lists the targets.
#
#   make install PREFIX=/opt/mlorc   # default PREFIX: $(CURDIR)/build/prefix
#   make test                        # test-rust ctest memcheck test-python
#
# MLORC_NUM_THREADS is passed through untouched (the library reads it).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c

CARGO    ?= cargo
CBINDGEN ?= cbindgen
CMAKE    ?= cmake
CTEST    ?= ctest
# build/venv exists only where the system Python refused pip installs (scripts/ensure-deps.sh).
PYTHON   ?= $(if $(wildcard $(CURDIR)/build/venv/bin/python3),$(CURDIR)/build/venv/bin/python3,python3)
export PATH := $(HOME)/.cargo/bin:$(PATH)
VALGRIND ?= valgrind

PREFIX       ?= $(CURDIR)/build/prefix
# ctest, memcheck and demo-c always test the package installed here.
TEST_PREFIX  := $(CURDIR)/build/prefix
CTEST_BUILD  := $(CURDIR)/build/ctests
DEMO_BUILD   := $(CURDIR)/build/examples-c
CMAKE_BUILD_TYPE ?= RelWithDebInfo
JOBS         ?= $(shell nproc 2>/dev/null || echo 2)

VALGRIND_FLAGS := --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
                  --show-leak-kinds=definite --track-origins=yes

.PHONY: help deps build header install install-test-prefix ctest-build ctest memcheck test-rust test-python test-python-install test-nvrtc \
        test demo-c demo bench bench-passes bench-model bench-kernels bench-speed bench-quality clean

help:
	@echo "targets: build header install ctest memcheck test-rust test-python test-python-install test-nvrtc test demo demo-c bench bench-passes bench-model bench-kernels bench-speed bench-quality clean"
	@echo "PREFIX=$(PREFIX)"

# What a fresh machine lacks for the demo and the tests (apt-get, pip; nothing else).
deps:
	scripts/ensure-deps.sh

build:
	$(CARGO) build --release

header:
	$(CBINDGEN) --config cbindgen.toml --crate mlorc --output include/mlorc.h

install: build
	scripts/install.sh "$(PREFIX)"

# The tests and the demo consume the package installed into build/prefix, whatever PREFIX is.
install-test-prefix: build
	scripts/install.sh "$(TEST_PREFIX)"

ctest-build: install-test-prefix
	$(CMAKE) -S ctests -B "$(CTEST_BUILD)" -DCMAKE_PREFIX_PATH="$(TEST_PREFIX)" \
	    -DCMAKE_BUILD_TYPE=$(CMAKE_BUILD_TYPE)
	$(CMAKE) --build "$(CTEST_BUILD)" -j $(JOBS)

ctest: ctest-build
	cd "$(CTEST_BUILD)" && $(CTEST) --output-on-failure -j $(JOBS)

# Every C test linked to the shared library, under valgrind. A failure of any one fails the target.
# No suppressions: the rayon pool threads of the library live until exit and show up as
# "possibly lost"/"still reachable", which --errors-for-leak-kinds=definite does not count.
memcheck: ctest-build
	@command -v $(VALGRIND) >/dev/null || { echo "memcheck: valgrind is not installed" >&2; exit 1; }
	@failed=0; ran=0; \
	for exe in "$(CTEST_BUILD)"/*_shared; do \
	    [ -x "$$exe" ] || continue; \
	    ran=$$((ran + 1)); \
	    echo "== memcheck $$(basename "$$exe")"; \
	    if ! $(VALGRIND) $(VALGRIND_FLAGS) --log-file="$$exe.valgrind.log" "$$exe" > "$$exe.memcheck.out" 2>&1; then \
	        failed=$$((failed + 1)); \
	        echo "FAILED: $$(basename "$$exe")"; cat "$$exe.memcheck.out" "$$exe.valgrind.log"; \
	    else \
	        grep -E "ERROR SUMMARY|definitely lost" "$$exe.valgrind.log" | sed 's/^==[0-9]*== /   /'; \
	    fi; \
	done; \
	echo "memcheck: $$ran executables, $$failed failed"; \
	[ $$ran -gt 0 ] && [ $$failed -eq 0 ]

test-rust:
	$(CARGO) test --profile test-opt
	$(CARGO) check --features pass-timing --bench cpu_step

test-python: build
	$(PYTHON) -m pytest -q bindings/python/tests

# `pip install ./bindings/python` into a fresh virtual environment, then use the package from
# outside the checkout with no MLORC_LIBRARY: the bundled library must be found.
VENV := $(CURDIR)/build/venv-install-check
test-python-install: build
	rm -rf "$(VENV)"
	$(PYTHON) -m venv --system-site-packages "$(VENV)"
	"$(VENV)/bin/pip" install --quiet ./bindings/python
	cd /tmp && env -u MLORC_LIBRARY "$(VENV)/bin/python" -c "import mlorc, mlorc.torch; \
	    print('installed package loads', mlorc.library_path(), 'version', mlorc.library_version())"

# Every CUDA kernel compiles with NVRTC (PyTorch's pip libnvrtc) for sm_80 and sm_90, no GPU needed.
test-nvrtc:
	PYTHON="$(PYTHON)" scripts/nvrtc-check.sh

test: deps
	$(MAKE) test-rust test-nvrtc ctest memcheck test-python test-python-install

demo-c: install-test-prefix
	$(CMAKE) -S examples/c -B "$(DEMO_BUILD)" -DCMAKE_PREFIX_PATH="$(TEST_PREFIX)" \
	    -DCMAKE_BUILD_TYPE=Release
	$(CMAKE) --build "$(DEMO_BUILD)" -j $(JOBS)
	"$(DEMO_BUILD)/train_demo"

# The main demo: a small transformer fine-tuned with AdamW and MLorc-AdamW side by side.
demo: deps
	$(MAKE) build
	$(PYTHON) examples/python/finetune_demo.py

# CPU step time of the library's MLorc-AdamW against its DENSE AdamW (BENCHMARKS.md): each case
# stepped back to back, then the cases alternating in paired rounds, warm and cold, with the
# ratio per round (on a machine whose speed drifts, the figure to compare).
bench:
	$(CARGO) bench --bench cpu_step
	MLORC_BENCH_PAIRED=$${MLORC_BENCH_PAIRED:-101} $(CARGO) bench --bench cpu_step

# The same, with the median wall time of each pass of the MLorc steps after the table.
bench-passes:
	$(CARGO) bench --bench cpu_step --features pass-timing

# One step_many over the 96 matrices of a 24-block d=256 transformer (narrow matrices, data
# from DRAM, one tensor per thread), with each pass's time summed over the tensors.
bench-model:
	MLORC_BENCH_MODEL=$${MLORC_BENCH_MODEL:-256x24} $(CARGO) bench --bench cpu_step --features pass-timing

# The projection and sketch kernels alone, one thread, with their data in L1, L3 and DRAM, and
# the projection pass's memory traffic without its arithmetic, and the per-step small work
# (orthonormalization, truncated SVD, Ω) (BENCHMARKS.md, section 1).
KERNELS := benches/kernels/target/release
bench-kernels:
	$(CARGO) build --release --manifest-path benches/kernels/Cargo.toml
	$(KERNELS)/sketch
	$(KERNELS)/pass 4 256 256
	$(KERNELS)/pass 256 4096 2048
	$(KERNELS)/pass 4096 4096 2048
	$(KERNELS)/pass 4096 4096 2048 0
	$(KERNELS)/pattern 4096 4096 2048
	$(KERNELS)/small

# Evidence against the alternatives (PyTorch, CPU): step time and memory, fine-tuning quality.
bench-speed: build
	$(PYTHON) benches/python/bench_speed.py
	$(PYTHON) benches/python/bench_model_step.py

bench-quality: build
	$(PYTHON) benches/python/bench_quality.py $(if $(QUICK),--quick)

clean:
	$(CARGO) clean
	rm -rf build
