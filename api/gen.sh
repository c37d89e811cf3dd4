#!/usr/bin/env bash
# Regenerates the Go code for api/ward/v1 from its .proto files.
# Needs protoc (Debian: protobuf-compiler) and the Go plugins:
#   go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
#   go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
set -euo pipefail
cd "$(dirname "$0")"
PATH="$(go env GOPATH)/bin:$PATH"
protoc -I . --go_out=. --go_opt=paths=source_relative \
  --go-grpc_out=. --go-grpc_opt=paths=source_relative \
  ward/v1/ward.proto ward/v1/identity.proto ward/v1/policy.proto ward/v1/federation.proto ward/v1/catalog.proto ward/v1/governance.proto ward/v1/maintenance.proto ward/v1/cluster.proto ward/v1/network.proto
