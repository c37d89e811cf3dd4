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
	// KeepVersions is how many policy versions before the current one
	// the authority keeps (history, rollback targets); older ones are
	// deleted in the same transaction as the apply (or revocation...)
	// that makes a new version. 0 or absent: 50. There is no unlimited
	// setting: every version is a whole bundle, served and backed up.
	KeepVersions int `yaml:"keep_versions"`
}

// DefaultKeepVersions is policy.keep_versions when 0 or absent.
const DefaultKeepVersions = 50

// MaxKeepVersions bounds policy.keep_versions.
const MaxKeepVersions = 100000

// Federation lint modes.
const (
	FederationLintWarn   = "warn"
	FederationLintStrict = "strict"
)

func (p *Policy) defaults() {
	if p.FederationLint == "" {
		p.FederationLint = FederationLintWarn
	}
	if p.KeepVersions == 0 {
		p.KeepVersions = DefaultKeepVersions
	}
}

func (p *Policy) validate() error {
	if p.KeepVersions < 0 || p.KeepVersions > MaxKeepVersions {
		return fmt.Errorf("policy.keep_versions %d is out of range: give how many versions before the current one to keep, 1 to %d (0 or absent: %d); there is no unlimited setting", p.KeepVersions, MaxKeepVersions, DefaultKeepVersions)
	}
	switch p.FederationLint {
	case FederationLintWarn, FederationLintStrict, "":
		return nil
	}
	return fmt.Errorf("policy.federation_lint %q is unknown: use warn (store the set, audit its warnings; the default) or strict (refuse a set whose permits do not constrain the caller's trust domain)", p.FederationLint)
}

// StrictFederationLint reports whether the authority refuses policy sets
// with federation warnings.
func (p Policy) StrictFederationLint() bool { return p.FederationLint == FederationLintStrict }
