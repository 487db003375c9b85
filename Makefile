# Drove: builds the NIF and runs every check.
#
# Targets
#   (none)           `make` alone runs `mix compile`, which calls back `make all`.
#   all              Build the NIF $(MIX_APP_PATH)/priv/drove_nif.so from c_src/*.c (pure C core)
#                    and c_src/nif/*.c (glue); objects go to $(MIX_APP_PATH)/obj. This is what the
#                    Mix compiler task Mix.Tasks.Compile.DroveNif (in mix.exs) runs.
#   setup            Idempotent. Checks the Debian packages in SETUP_PACKAGES with dpkg and installs
#                    the missing ones with apt-get (as root); otherwise prints the command and fails.
#   test             setup, lint, dialyzer, test-c, test-c-asan, test-c-valgrind, fuzz-short
#                    (when fuzz/fuzz_*.c exist), test-elixir, test-nif-asan-short, in that
#                    order; stops at the first failure.
#   test-c           Build each Criterion suite test/c/test_<name>.c with the core c_src/*.c (not
#                    c_src/nif) into _build/c/test_<name> and run it; fails on a non-zero exit.
#   test-c-asan      The same under ASan+UBSan: _build/c/test_<name>_asan.
#   test-c-valgrind  The plain suites under valgrind (-j1); fails when a log in _build/c/vg.*.log
#                    has errors or definite/indirect leaks (Criterion itself exits 0 then).
#   test-elixir      Start epmd (loopback), `mix compile --warnings-as-errors` and `mix test`
#                    (MIX_ENV=test), then the same in compat/horde when compat/horde/mix.exs
#                    exists (the Horde drop-in package and its suite).
#   dialyzer         `mix compile` (MIX_ENV=dev) here and in compat/horde, then Dialyzer
#                    (erlang-dialyzer) over _build/dev/lib/drove/ebin and the horde beams with
#                    -Wunknown; fails on any warning. The PLT (erts kernel stdlib crypto and
#                    the Elixir modules used) is built once into $(DIALYZER_PLT_DIR) (about
#                    1 min) and then only checked.
#   test-nif-asan    Build the NIF with ASan+UBSan into MIX_BUILD_PATH=_build/asan and run the
#                    ExUnit suite (plus the :sanitizer tag) in a stock BEAM with the ASan runtime
#                    preloaded and ERL_FLAGS="+Mea min" (about 4 min; see docs/reliability.md).
#   test-nif-asan-short  The same build and BEAM on NIF_ASAN_SHORT_TESTS only, the files that
#                    drive the NIF with hostile input (part of `make test`).
#   fuzz             Build each libFuzzer target fuzz/fuzz_<name>.c into _build/fuzz/fuzz_<name>
#                    and run it FUZZ_SECONDS (60) over fuzz/corpus/<name>/; fails on a crash.
#                    New inputs go to the scratch dir _build/fuzz/corpus/<name>/, never the repo.
#   fuzz-short       The same with FUZZ_SECONDS=5 (part of `make test`).
#   fuzz-merge       Merge the scratch corpora into fuzz/corpus/<name>/ (minimised; to commit).
#   lint             clang-format --dry-run --Werror on c_src/**/*.[ch], test/c/*.[ch],
#                    fuzz/*.[ch], and mix format --check-formatted (and in compat/horde).
#   format           Apply clang-format and mix format.
#   bench-c          Build and run bench/c/catchup.c (N=entries, default 1000000).
#   bench-shrink     Build and run bench/c/shrink.c: the slowest deletes while a map of N keys
#                    (default 1000000) empties, with and without the shrink steps.
#   bench            Run every bench/*.exs (or BENCH=bench/x.exs) with `mix run` on the
#                    distributed node bench@127.0.0.1, cookie drove, MIX_ENV=dev. Checks
#                    BENCH_PACKAGES first (setup-bench).
#   setup-bench      setup for BENCH_PACKAGES (gnuplot-nox, which bench/scale.exs draws its
#                    chart with); not needed by the tests.
#   demo             setup, epmd, then demo/demo.exs on node demo@127.0.0.1, cookie drove.
#   chaos            `mix test --only chaos_long` with DROVE_CHAOS_SECONDS=$(SECONDS) (600).
#                    Set it on the command line: `make chaos SECONDS=60`.
#   clean            Remove this build's NIF and objects, and _build/c, _build/fuzz.
#   distclean        Remove all of _build.
#   help             Print this header.
#
# Variables (all overridable: `make VAR=value target`)
#   MIX_APP_PATH      Where priv/ and obj/ go. Set by Mix; for a bare `make all` it defaults to
#                     $(MIX_BUILD_PATH)/lib/drove, MIX_BUILD_PATH to _build/$(MIX_ENV), MIX_ENV to dev.
#   ERTS_INCLUDE_DIR  Directory of erl_nif.h. Set by Mix; otherwise asked from `erl` once.
#   CC                C compiler for the NIF and the Criterion suites (default cc).
#   CFLAGS            Optimisation/debug flags, default -O2 -g. The warning set and -std=c11,
#                     -fPIC, -fvisibility=hidden, -D_GNU_SOURCE are always added (DROVE_CFLAGS).
#   CPPFLAGS, LDFLAGS, LDLIBS   Extra preprocessor, linker flags and libraries for the NIF.
#   V=1               Echo full compile commands.
#   MIX               The mix executable (default mix).
#   FUZZ_CC           Compiler for fuzz targets (default clang). FUZZ_SECONDS, FUZZ_FLAGS.
#   ASAN_RUNTIME      Runtime preloaded by test-nif-asan (default: $(CC) -print-file-name=libasan.so).
#   ASAN_BUILD_PATH   MIX_BUILD_PATH of test-nif-asan (default _build/asan).
#   NIF_ASAN_SHORT_TESTS  Test files run by test-nif-asan-short.
#   VALGRIND, VALGRIND_FLAGS
#   SETUP_PACKAGES    Debian packages checked by setup.
#   BENCH_PACKAGES    Debian packages checked by setup-bench (only for `make bench`).
#   DIALYZER, DIALYZER_FLAGS, DIALYZER_PLT_DIR
#   SECONDS           Duration of `make chaos`.
#   BENCH             Bench scripts run by `make bench`.
#
# Objects of different builds never collide: the NIF's live under $(MIX_APP_PATH)/obj (one per
# MIX_ENV / MIX_BUILD_PATH), the Criterion builds under _build/c/{plain,asan}, fuzzers under
# _build/fuzz. A change of compiler or flags rebuilds the NIF objects (obj/build-flags stamp).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.SUFFIXES:
.DELETE_ON_ERROR:

MIX ?= mix
MIX_ENV ?= dev

# Bare `make` goes through Mix (bcrypt_elixir's `calling_from_make`). Mix always calls
# `make all` with MIX_APP_PATH set, so this never recurses.
ifeq ($(origin MIX_APP_PATH),undefined)
.DEFAULT_GOAL := calling_from_make
MIX_BUILD_PATH ?= $(CURDIR)/_build/$(MIX_ENV)
MIX_APP_PATH := $(MIX_BUILD_PATH)/lib/drove
else
.DEFAULT_GOAL := all
endif

PRIV_DIR := $(MIX_APP_PATH)/priv
OBJ_DIR := $(MIX_APP_PATH)/obj
NIF := $(PRIV_DIR)/drove_nif.so

CORE_SRC := $(wildcard c_src/*.c)
CORE_HDR := $(wildcard c_src/*.h)
NIF_SRC := $(CORE_SRC) $(wildcard c_src/nif/*.c)
NIF_OBJ := $(patsubst c_src/%.c,$(OBJ_DIR)/%.o,$(NIF_SRC))

# ERTS headers: only when the NIF is being built, and asked from `erl` at most once
# (simply expanded; exported so sub-makes reuse it).
ifndef ERTS_INCLUDE_DIR
ifneq ($(filter all $(NIF) $(OBJ_DIR)/%,$(or $(MAKECMDGOALS),$(.DEFAULT_GOAL))),)
ERTS_INCLUDE_DIR := $(shell erl -noshell -eval 'io:format("~ts/erts-~ts/include", [code:root_dir(), erlang:system_info(version)]), halt().' 2>/dev/null)
endif
endif
ifneq ($(ERTS_INCLUDE_DIR),)
export ERTS_INCLUDE_DIR
endif

CFLAGS ?= -O2 -g
DROVE_CFLAGS := -std=c11 -Wall -Wextra -Werror -Wmissing-prototypes -fPIC -fvisibility=hidden \
	-D_GNU_SOURCE
DROVE_CPPFLAGS = -I$(ERTS_INCLUDE_DIR) -Ic_src
DEPFLAGS := -MMD -MP
# User CFLAGS come last so that they can override (e.g. -O0, -Wno-error).
NIF_COMPILE = $(CC) $(DROVE_CPPFLAGS) $(CPPFLAGS) $(DROVE_CFLAGS) $(CFLAGS)
NIF_LINK = $(CC) -shared $(LDFLAGS)

ifeq ($(V),1)
Q :=
msg = @:
else
Q := @
msg = @printf '  %-8s %s\n' '$(1)' '$(2)'
endif

# Criterion suites: objects per flavour under _build/c/<flavour>/<source path>.o
C_BUILD := _build/c
TEST_SRC := $(wildcard test/c/test_*.c)
TEST_NAMES := $(patsubst test/c/test_%.c,%,$(TEST_SRC))
TEST_BINS := $(TEST_NAMES:%=$(C_BUILD)/test_%)
ASAN_TEST_BINS := $(TEST_NAMES:%=$(C_BUILD)/test_%_asan)
CORE_OBJ_PLAIN := $(CORE_SRC:%.c=$(C_BUILD)/plain/%.o)
CORE_OBJ_ASAN := $(CORE_SRC:%.c=$(C_BUILD)/asan/%.o)
TEST_WARN := -Wall -Wextra -Wmissing-prototypes
TEST_CFLAGS := -std=c11 -D_GNU_SOURCE -Ic_src $(TEST_WARN)
PLAIN_CFLAGS := -O1 -g -Werror
# No -Werror here: gcc's sanitizer instrumentation can raise false warnings; the plain and NIF
# builds keep the warnings fatal.
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
ASAN_CFLAGS := -O1 -g $(SAN_FLAGS)
ASAN_ENV := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

VALGRIND ?= valgrind
VALGRIND_FLAGS ?= --trace-children=yes --leak-check=full --errors-for-leak-kinds=definite,indirect

# libFuzzer targets
FUZZ_CC ?= clang
FUZZ_SRC := $(wildcard fuzz/fuzz_*.c)
FUZZ_NAMES := $(patsubst fuzz/fuzz_%.c,%,$(FUZZ_SRC))
FUZZ_BINS := $(FUZZ_NAMES:%=_build/fuzz/fuzz_%)
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
	-fno-sanitize-recover=all -fno-omit-frame-pointer -Ic_src
FUZZ_SECONDS ?= 60
FUZZ_FLAGS ?=

# NIF under ASan inside a stock BEAM (nif-craft.md section 5.2)
ASAN_BUILD_PATH ?= $(CURDIR)/_build/asan
ASAN_RUNTIME ?= $(shell $(CC) -print-file-name=libasan.so)
NIF_ASAN_CFLAGS := -O1 -g $(SAN_FLAGS) -Wno-error
NIF_ASAN_LDFLAGS := -fsanitize=address,undefined

CLANG_FORMAT ?= clang-format
# Recursive (=) so that `find` only runs for lint/format.
FORMAT_FILES = $(sort $(shell find c_src -name '*.[ch]' 2>/dev/null) \
	$(wildcard test/c/*.[ch] fuzz/*.[ch] bench/c/*.[ch]))

BENCH ?= $(filter-out bench/bench_helper.exs,$(wildcard bench/*.exs))
SECONDS ?= 600

export ERL_EPMD_ADDRESS ?= 127.0.0.1

SETUP_PACKAGES ?= make gcc libc6-dev erlang-dev erlang-nox elixir libxxhash-dev \
	libcriterion-dev valgrind clang libclang-rt-14-dev clang-format erlang-dialyzer
BENCH_PACKAGES ?= gnuplot-nox


.PHONY: calling_from_make all check-erts setup test test-c test-c-asan test-c-valgrind \
	test-elixir test-nif-asan test-nif-asan-short nif-asan-build dialyzer fuzz fuzz-short fuzz-run fuzz-merge lint format bench bench-c bench-shrink demo chaos \
	setup-bench \
	clean distclean help start-epmd FORCE

calling_from_make:
	$(MIX) compile

# ---------------------------------------------------------------------------------------------
# The NIF

ifeq ($(strip $(NIF_SRC)),)
all:
	@echo "drove: no C sources in c_src/ yet; skipping the NIF build"
else
all: $(NIF)
endif

$(NIF): $(NIF_OBJ) $(OBJ_DIR)/build-flags
	@mkdir -p $(@D)
	$(call msg,LD,$@)
	$(Q)$(NIF_LINK) -o $@ $(NIF_OBJ) $(LDLIBS)

$(OBJ_DIR)/%.o: c_src/%.c Makefile $(OBJ_DIR)/build-flags | check-erts
	@mkdir -p $(@D)
	$(call msg,CC,$<)
	$(Q)$(NIF_COMPILE) $(DEPFLAGS) -c -o $@ $<

# Rewritten only when the compiler or flags change, so that objects rebuild then.
NIF_BUILD_ID = $(NIF_COMPILE) | $(NIF_LINK) $(LDLIBS)
$(OBJ_DIR)/build-flags: FORCE
	@mkdir -p $(@D)
	@echo '$(NIF_BUILD_ID)' | cmp -s - $@ || echo '$(NIF_BUILD_ID)' > $@

check-erts:
	@test -f "$(ERTS_INCLUDE_DIR)/erl_nif.h" || { \
	  echo "drove: erl_nif.h not found in ERTS_INCLUDE_DIR='$(ERTS_INCLUDE_DIR)'." >&2; \
	  echo "       Install erlang-dev (make setup) or set ERTS_INCLUDE_DIR." >&2; exit 1; }

FORCE:

-include $(NIF_OBJ:.o=.d)

# ---------------------------------------------------------------------------------------------
# Setup

setup:
	@if ! command -v dpkg-query >/dev/null 2>&1; then \
	  echo "setup: no dpkg-query (not Debian?); make sure these are installed: $(SETUP_PACKAGES)" >&2; \
	  exit 0; \
	fi; \
	installed=" $$( (dpkg-query -W -f='$${Package} $${Status}\n' $(SETUP_PACKAGES) 2>/dev/null || true) \
	  | awk '/ ok installed$$/ { printf "%s ", $$1 }')"; \
	missing=""; \
	for p in $(SETUP_PACKAGES); do \
	  case "$$installed" in *" $$p "*) ;; *) missing="$$missing $$p" ;; esac; \
	done; \
	if [ -z "$$missing" ]; then echo "setup: all packages installed"; exit 0; fi; \
	cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y$$missing"; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "setup: missing Debian packages:$$missing" >&2; \
	  echo "setup: run as root: sudo sh -c '$$cmd'" >&2; \
	  exit 1; \
	fi; \
	echo "setup: installing$$missing"; \
	apt-get update; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing

setup-bench:
	@$(MAKE) --no-print-directory setup SETUP_PACKAGES="$(BENCH_PACKAGES)"

# ---------------------------------------------------------------------------------------------
# Everything, in order; each step is a sub-make so that it sees what setup installed.

test:
	@$(MAKE) --no-print-directory setup
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory dialyzer
	@$(MAKE) --no-print-directory test-c
	@$(MAKE) --no-print-directory test-c-asan
	@$(MAKE) --no-print-directory test-c-valgrind
ifneq ($(FUZZ_SRC),)
	@$(MAKE) --no-print-directory fuzz-short
endif
	@$(MAKE) --no-print-directory test-elixir
	@$(MAKE) --no-print-directory test-nif-asan-short

# ---------------------------------------------------------------------------------------------
# Criterion suites

$(C_BUILD)/plain/%.o: %.c Makefile
	@mkdir -p $(@D)
	$(call msg,CC,$<)
	$(Q)$(CC) $(TEST_CFLAGS) $(PLAIN_CFLAGS) $(DEPFLAGS) -c -o $@ $<

$(C_BUILD)/asan/%.o: %.c Makefile
	@mkdir -p $(@D)
	$(call msg,CC-ASAN,$<)
	$(Q)$(CC) $(TEST_CFLAGS) $(ASAN_CFLAGS) $(DEPFLAGS) -c -o $@ $<

$(TEST_BINS): $(C_BUILD)/test_%: $(C_BUILD)/plain/test/c/test_%.o $(CORE_OBJ_PLAIN)
	$(call msg,LD,$@)
	$(Q)$(CC) -o $@ $^ -lcriterion

$(ASAN_TEST_BINS): $(C_BUILD)/test_%_asan: $(C_BUILD)/asan/test/c/test_%.o $(CORE_OBJ_ASAN)
	$(call msg,LD-ASAN,$@)
	$(Q)$(CC) $(SAN_FLAGS) -o $@ $^ -lcriterion

-include $(patsubst %.c,$(C_BUILD)/plain/%.d,$(CORE_SRC) $(TEST_SRC))
-include $(patsubst %.c,$(C_BUILD)/asan/%.d,$(CORE_SRC) $(TEST_SRC))

# $(1): binaries, $(2): command prefix. Runs all, then fails if any failed.
define run_suites
@if [ -z "$(strip $(1))" ]; then echo "no Criterion suites in test/c/"; exit 0; fi; \
	failed=""; \
	for t in $(1); do \
	  echo "==> $$t"; \
	  $(2) ./$$t || { echo "FAILED (exit $$?): $$t"; failed="$$failed $$t"; }; \
	done; \
	if [ -n "$$failed" ]; then echo "Criterion suites failed:$$failed" >&2; exit 1; fi
endef

test-c: $(TEST_BINS)
	$(call run_suites,$(TEST_BINS),)

test-c-asan: $(ASAN_TEST_BINS)
	$(call run_suites,$(ASAN_TEST_BINS),$(ASAN_ENV))

# Criterion runs each test in a forked worker, and valgrind's error exit code does not propagate
# from there, so the logs are the verdict (nif-craft.md section 5.2).
test-c-valgrind: $(TEST_BINS)
	@rm -f $(C_BUILD)/vg.*.log
	@if [ -z "$(strip $(TEST_BINS))" ]; then echo "no Criterion suites in test/c/"; exit 0; fi; \
	failed=""; \
	for t in $(TEST_BINS); do \
	  echo "==> valgrind $$t"; \
	  $(VALGRIND) $(VALGRIND_FLAGS) --log-file=$(C_BUILD)/vg.%p.log ./$$t -j1 \
	    || { echo "FAILED (exit $$?): $$t"; failed="$$failed $$t"; }; \
	done; \
	bad=$$(grep -l -E 'ERROR SUMMARY: [1-9]|definitely lost: [1-9]|indirectly lost: [1-9]' \
	    $(C_BUILD)/vg.*.log 2>/dev/null || true); \
	for f in $$bad; do echo "==== $$f"; cat "$$f"; done; \
	if [ -n "$$bad" ]; then echo "valgrind found errors or leaks in:" $$bad >&2; fi; \
	if [ -n "$$failed" ]; then echo "Criterion suites failed under valgrind:$$failed" >&2; fi; \
	if [ -n "$$bad$$failed" ]; then exit 1; fi; \
	echo "valgrind: no errors, no definite/indirect leaks"

# ---------------------------------------------------------------------------------------------
# Fuzzing (clang + libFuzzer)

$(FUZZ_BINS): _build/fuzz/fuzz_%: fuzz/fuzz_%.c $(CORE_SRC) $(CORE_HDR) Makefile
	@mkdir -p $(@D)
	$(call msg,FUZZ-CC,$@)
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< $(CORE_SRC)

# The repo corpus is passed second (read only); libFuzzer writes new inputs to the first dir.
fuzz-run: $(FUZZ_BINS)
	@if [ -z "$(FUZZ_NAMES)" ]; then echo "no fuzz targets in fuzz/"; exit 0; fi; \
	failed=""; \
	for n in $(FUZZ_NAMES); do \
	  mkdir -p fuzz/corpus/$$n _build/fuzz/corpus/$$n _build/fuzz/artifacts; \
	  dict=""; if [ -f fuzz/$$n.dict ]; then dict="-dict=fuzz/$$n.dict"; fi; \
	  echo "==> fuzz_$$n for $(FUZZ_SECONDS) s"; \
	  ASAN_OPTIONS=abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  ./_build/fuzz/fuzz_$$n -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	    -artifact_prefix=_build/fuzz/artifacts/$$n- $$dict $(FUZZ_FLAGS) \
	    _build/fuzz/corpus/$$n fuzz/corpus/$$n \
	    || { echo "FAILED (exit $$?): fuzz_$$n; see _build/fuzz/artifacts/"; failed="$$failed $$n"; }; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzzers failed:$$failed" >&2; exit 1; fi

fuzz:
	@$(MAKE) --no-print-directory fuzz-run FUZZ_SECONDS=$(FUZZ_SECONDS)

fuzz-short:
	@$(MAKE) --no-print-directory fuzz-run FUZZ_SECONDS=$(if $(filter command line environment,$(origin FUZZ_SECONDS)),$(FUZZ_SECONDS),5)

fuzz-merge: $(FUZZ_BINS)
	@for n in $(FUZZ_NAMES); do \
	  mkdir -p fuzz/corpus/$$n _build/fuzz/corpus/$$n; \
	  ./_build/fuzz/fuzz_$$n -merge=1 fuzz/corpus/$$n _build/fuzz/corpus/$$n; \
	done

# ---------------------------------------------------------------------------------------------
# Elixir

start-epmd:
	@epmd -daemon

test-elixir: start-epmd
	MIX_ENV=test $(MIX) compile --warnings-as-errors
	MIX_ENV=test $(MIX) test
	@if [ -f compat/horde/mix.exs ]; then \
	  echo "==> compat/horde: mix compile --warnings-as-errors, mix test"; \
	  cd compat/horde && MIX_ENV=test $(MIX) compile --warnings-as-errors && \
	    MIX_ENV=test $(MIX) test; \
	fi

NIF_ASAN_SHORT_TESTS ?= test/drove/property_test.exs test/drove/bad_peer_test.exs \
	test/drove/fault_test.exs test/drove/crdt_test.exs test/drove/registry_test.exs \
	test/drove/term_codec_test.exs
NIF_ASAN_ENV = MIX_ENV=test MIX_BUILD_PATH=$(ASAN_BUILD_PATH) LD_PRELOAD=$(ASAN_RUNTIME) \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ERL_FLAGS="+Mea min"

nif-asan-build:
	MIX_ENV=test MIX_BUILD_PATH=$(ASAN_BUILD_PATH) CFLAGS="$(NIF_ASAN_CFLAGS)" \
	  LDFLAGS="$(NIF_ASAN_LDFLAGS)" $(MIX) compile
	@test -f "$(ASAN_RUNTIME)" || { echo "ASan runtime '$(ASAN_RUNTIME)' not found" >&2; exit 1; }

test-nif-asan: start-epmd nif-asan-build
	$(NIF_ASAN_ENV) $(MIX) test --no-compile --include sanitizer

test-nif-asan-short: start-epmd nif-asan-build
	$(NIF_ASAN_ENV) $(MIX) test --no-compile --include sanitizer $(NIF_ASAN_SHORT_TESTS)

bench: start-epmd setup-bench
	@if [ -z "$(strip $(BENCH))" ]; then echo "no bench/*.exs"; exit 0; fi; \
	for b in $(BENCH); do \
	  echo "==> $$b"; \
	  MIX_ENV=dev elixir --name bench@127.0.0.1 --cookie drove -S mix run $$b; \
	done

# C-only catch-up benchmark of the core (N entries, default 1M): delta_since, decode, join,
# puts/s and bytes per entry; it checks the caught-up map equals the source.
bench-c: _build/bench/catchup
	./_build/bench/catchup $(or $(N),1000000)

_build/bench/catchup: bench/c/catchup.c $(CORE_SRC) $(CORE_HDR) Makefile
	@mkdir -p $(@D)
	$(CC) -O2 -g $(TEST_CFLAGS) -Werror -o $@ bench/c/catchup.c $(CORE_SRC)

# C-only cost of giving memory back (issue 20): the slowest single deletes while a map of N
# keys (default 1000000) empties, with the shrink and evacuation steps and without.
bench-shrink: _build/bench/shrink
	./_build/bench/shrink $(or $(N),1000000)

_build/bench/shrink: bench/c/shrink.c $(CORE_SRC) $(CORE_HDR) Makefile
	@mkdir -p $(@D)
	$(CC) -O2 -g $(TEST_CFLAGS) -Werror -o $@ bench/c/shrink.c $(CORE_SRC)

demo:
	@$(MAKE) --no-print-directory setup
	@epmd -daemon
	MIX_ENV=dev elixir --name demo@127.0.0.1 --cookie drove -S mix run demo/demo.exs

# The long chaos run (test/drove/chaos_test.exs): SECONDS of faults under load (default 600);
# replay a run with DROVE_CHAOS_SEED=<the seed it printed>.
chaos: start-epmd
	DROVE_CHAOS_SECONDS=$(or $(SECONDS),600) MIX_ENV=test $(MIX) test --only chaos_long

# ---------------------------------------------------------------------------------------------
# Dialyzer

DIALYZER ?= dialyzer
DIALYZER_FLAGS ?= -Wunknown
DIALYZER_PLT_DIR ?= _build/dialyzer
DIALYZER_PLT_APPS := erts kernel stdlib crypto
# Elixir modules the PLT holds besides those the beams call (found from their imports):
# behaviours, and modules whose types the specs name. A new one shows as an unknown type or
# callback in the analysis; add it here.
DIALYZER_PLT_ELIXIR := elixir Elixir.Application Elixir.Macro Elixir.Registry Elixir.String \
	Elixir.Range Elixir.Enumerable Elixir.Logger
DIALYZER_BEAMS := _build/dev/lib/drove/ebin $(if $(wildcard compat/horde/mix.exs),\
	compat/horde/_build/dev/lib/horde/ebin)
# The beams of Elixir and Logger modules the analysed beams call, plus DIALYZER_PLT_ELIXIR.
DIALYZER_ELIXIR_BEAMS = Dirs = string:lexemes(os:getenv("DIA_DIRS"), " "), \
	Lib = os:getenv("DIA_LIBS"), \
	Beams = lists:append([filelib:wildcard(D ++ "/*.beam") || D <- Dirs]), \
	Called = [M || B <- Beams, {ok, {_, [{imports, I}]}} <- [beam_lib:chunks(B, [imports])], \
	  {M, _, _} <- I], \
	Extra = [list_to_atom(X) || X <- string:lexemes(os:getenv("DIA_EXTRA"), " ")], \
	Files = [F || M <- lists:usort(Called ++ Extra), A <- ["elixir", "logger"], \
	  F <- [filename:join([Lib, A, "ebin", atom_to_list(M) ++ ".beam"])], filelib:is_file(F)], \
	io:format("~s", [lists:join(" ", Files)]), halt().

# Elixir's beams carry their debug info in Elixir's format: Dialyzer reads it through the
# elixir application, so Elixir's lib directory goes on the code path (ERL_LIBS). The PLT
# holds the OTP applications and only the Elixir modules used (a PLT of all of Elixir takes
# 2-4 min to build on the 2-core machine, this one under a minute); its name carries the OTP
# release and a hash of its module list, so a new list builds a new PLT. Dialyzer itself
# updates a PLT when a beam in it changes.
dialyzer:
	MIX_ENV=dev $(MIX) compile --warnings-as-errors
	@if [ -f compat/horde/mix.exs ]; then \
	  echo "==> compat/horde: mix compile (MIX_ENV=dev)"; \
	  cd compat/horde && MIX_ENV=dev $(MIX) compile --warnings-as-errors; \
	fi
	@command -v $(DIALYZER) >/dev/null || { echo "dialyzer not found: make setup" >&2; exit 1; }
	@libs=$$(elixir -e 'IO.write(Path.dirname(:code.lib_dir(:elixir)))'); \
	otp=$$(erl -noshell -eval 'io:format("~s", [erlang:system_info(otp_release)]), halt().'); \
	ex=$$(DIA_DIRS="$(DIALYZER_BEAMS)" DIA_LIBS="$$libs" DIA_EXTRA="$(DIALYZER_PLT_ELIXIR)" \
	  erl -noshell -eval '$(DIALYZER_ELIXIR_BEAMS)'); \
	sum=$$(echo "$(DIALYZER_PLT_APPS) $$ex" | md5sum | cut -c1-12); \
	plt=$(DIALYZER_PLT_DIR)/drove-otp$$otp-$$sum.plt; \
	mkdir -p $(DIALYZER_PLT_DIR); \
	if [ ! -f $$plt ]; then \
	  echo "==> dialyzer: building $$plt (once)"; \
	  ERL_LIBS=$$libs $(DIALYZER) --build_plt --output_plt $$plt.tmp \
	    --apps $(DIALYZER_PLT_APPS) $$ex && mv $$plt.tmp $$plt; \
	fi; \
	echo "==> dialyzer $(DIALYZER_FLAGS) $(DIALYZER_BEAMS)"; \
	ERL_LIBS=$$libs $(DIALYZER) --plt $$plt $(DIALYZER_FLAGS) $(DIALYZER_BEAMS)

# ---------------------------------------------------------------------------------------------
# Lint and format

lint:
	@files="$(FORMAT_FILES)"; \
	if [ -n "$$files" ]; then \
	  echo "==> clang-format --dry-run --Werror"; \
	  $(CLANG_FORMAT) --dry-run --Werror $$files; \
	fi
	@echo "==> mix format --check-formatted"
	@$(MIX) format --check-formatted
	@if [ -f compat/horde/.formatter.exs ]; then \
	  echo "==> compat/horde: mix format --check-formatted"; \
	  cd compat/horde && $(MIX) format --check-formatted; \
	fi

format:
	@files="$(FORMAT_FILES)"; if [ -n "$$files" ]; then $(CLANG_FORMAT) -i $$files; fi
	$(MIX) format
	@if [ -f compat/horde/.formatter.exs ]; then cd compat/horde && $(MIX) format; fi

# ---------------------------------------------------------------------------------------------

clean:
	rm -rf $(OBJ_DIR) $(NIF) $(C_BUILD) _build/fuzz

distclean:
	rm -rf _build

help:
	@sed -n '/^# Drove/,/^$$/p' $(firstword $(MAKEFILE_LIST)) | sed 's/^# \{0,1\}//'
