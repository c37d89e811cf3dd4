package kms

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/wardproject/ward/internal/shared/kmsfmt"
)

// Classification is one row of the classification table: it sets the
// algorithm of new key versions, how often keys rotate and how many of the
// newest versions stay decryptable (0 = all). A hardware-backed row keeps
// every key version in the authority's PKCS#11 HSM (algorithm
// aes-256-gcm-hsm): generated there, never extractable, every encryption
// and decryption done there (hsm.go).
type Classification struct {
	Name           string
	Algorithm      kmsfmt.Alg
	RotationPeriod time.Duration
	KeepVersions   uint32
	HardwareBacked bool
}

// Table maps classification names to their rows.
type Table map[string]Classification

const day = 24 * time.Hour

// DefaultTable is used when the operator configures none. Higher
// classifications rotate more often, keep fewer versions decryptable and use
// a per-message subkey so no key version ever approaches AES-GCM's
// random-nonce limits.
func DefaultTable() Table {
	return Table{
		"public":       {Name: "public", Algorithm: kmsfmt.AlgAES256GCM, RotationPeriod: 365 * day},
		"internal":     {Name: "internal", Algorithm: kmsfmt.AlgAES256GCMHKDF, RotationPeriod: 180 * day},
		"confidential": {Name: "confidential", Algorithm: kmsfmt.AlgAES256GCMHKDF, RotationPeriod: 90 * day, KeepVersions: 12},
		"restricted":   {Name: "restricted", Algorithm: kmsfmt.AlgAES256GCMHKDF, RotationPeriod: 30 * day, KeepVersions: 3},
	}
}

// Names returns the table's classification names, sorted.
func (t Table) Names() []string {
	out := make([]string, 0, len(t))
	for n := range t {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Lookup returns the row for name or an error listing the valid names.
func (t Table) Lookup(name string) (Classification, error) {
	c, ok := t[name]
	if !ok {
		return Classification{}, fmt.Errorf("unknown classification %q: use one of %s (the operator can change the table in the server config)", name, strings.Join(t.Names(), ", "))
	}
	return c, nil
}

// Validate checks every row.
func (t Table) Validate() error {
	if len(t) == 0 {
		return fmt.Errorf("classification table is empty: define at least one classification")
	}
	for n, c := range t {
		if c.Name != n {
			return fmt.Errorf("classification %q: row name %q differs from its key", n, c.Name)
		}
		if c.RotationPeriod < time.Minute {
			return fmt.Errorf("classification %q: rotation period %s is shorter than one minute", n, c.RotationPeriod)
		}
		if _, err := kmsfmt.ParseAlg(c.Algorithm.String()); err != nil {
			return fmt.Errorf("classification %q: %v", n, err)
		}
		if c.HardwareBacked != (c.Algorithm == kmsfmt.AlgAES256GCMHSM) {
			return fmt.Errorf("classification %q: hardware-backed rows, and only they, use algorithm %s", n, kmsfmt.AlgAES256GCMHSM)
		}
	}
	return nil
}
