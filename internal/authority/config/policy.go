package config

import "fmt"

// Policy configures what the authority accepts as a policy set
// (docs/policy.md).
type Policy struct {
	// FederationLint is what the authority does with a policy set one of
	// whose permits does not constrain the caller's trust domain (it
	// admits federated workloads with the same path or labels too): "warn"
	// (the default) stores it and records the warnings in the audit event
	// of the change; "strict" refuses it and stores nothing. `ward policy
	// apply --strict` does the same check in the CLI, this one holds for
	// every client of the admin API.
	FederationLint string `yaml:"federation_lint"`
}

// Federation lint modes.
const (
	FederationLintWarn   = "warn"
	FederationLintStrict = "strict"
)

func (p *Policy) defaults() {
	if p.FederationLint == "" {
		p.FederationLint = FederationLintWarn
	}
}

func (p *Policy) validate() error {
	switch p.FederationLint {
	case FederationLintWarn, FederationLintStrict, "":
		return nil
	}
	return fmt.Errorf("policy.federation_lint %q is unknown: use warn (store the set, audit its warnings; the default) or strict (refuse a set whose permits do not constrain the caller's trust domain)", p.FederationLint)
}

// StrictFederationLint reports whether the authority refuses policy sets
// with federation warnings.
func (p Policy) StrictFederationLint() bool { return p.FederationLint == FederationLintStrict }
