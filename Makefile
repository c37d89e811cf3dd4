.PHONY: test build run proto bench fuzz

build:
	go build -o bin/ward ./cmd/ward

# Installs test dependencies (Debian) and runs every test.
test:
	bash scripts/test.sh

run:
	go run ./cmd/ward server --dev

proto:
	bash api/gen.sh

bench:
	bash bench/run.sh

# Short fuzz pass over every fuzz target (FUZZTIME=20s by default).
fuzz:
	bash scripts/fuzz.sh
