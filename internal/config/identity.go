package config

// Identity configures workload identity: the CA, node attestation and the
// Node API that agents reach over mTLS.
type Identity struct{}

func (i *Identity) defaults(c *Server) {}

func (i *Identity) validate() error { return nil }
