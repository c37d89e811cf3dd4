package server

import (
	"context"

	"google.golang.org/grpc"
)

// identityState holds the workload identity services while unsealed.
type identityState struct{}

// registerIdentity registers the identity admin services on the admin
// gRPC server.
func (s *Server) registerIdentity(g *grpc.Server) {}

// startIdentity starts the CA, registry and Node API after unseal.
func (s *Server) startIdentity(ctx context.Context, st *unsealedState) error { return nil }

// stopIdentity stops them on seal.
func (s *Server) stopIdentity(st *unsealedState) {}
