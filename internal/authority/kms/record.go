package kms

import (
	"fmt"
	"time"

	"github.com/wardproject/ward/internal/shared/kmscrypto"
	"github.com/wardproject/ward/internal/shared/kmsfmt"
)

// Version states as stored. Display states "active" and "decrypt-only"
// are derived from enabled + latest.
const (
	StateEnabled   = "enabled"
	StateDisabled  = "disabled"
	StateDestroyed = "destroyed"
)

// VersionRecord is one stored key version.
type VersionRecord struct {
	Version      uint32    `json:"version"`
	State        string    `json:"state"`
	Alg          string    `json:"alg"`
	Created      time.Time `json:"created"`
	StateChanged time.Time `json:"state_changed"`
	Material     []byte    `json:"material,omitempty"`
	// HSMKey is the label of the version's key in the HSM
	// (hardware-backed classifications): a handle, never key material.
	HSMKey string `json:"hsm_key,omitempty"`
}

// KeyRecord is one stored key (encrypted by the barrier before storage).
type KeyRecord struct {
	Name string `json:"name"`
	// Revision grows by one with every change of the record; the audit
	// log records it (with a digest) so an older copy is recognised.
	Revision          uint64          `json:"revision,omitempty"`
	Classification    string          `json:"classification"`
	Purpose           string          `json:"purpose,omitempty"`
	Created           time.Time       `json:"created"`
	LastRotated       time.Time       `json:"last_rotated"`
	MinDecryptVersion uint32          `json:"min_decrypt_version"`
	Versions          []VersionRecord `json:"versions"`
	// Rotations holds a digest of the idempotency keys of the last manual
	// rotations (maxRotationIDs), so a rotation retried after an unknown
	// outcome (its authority died) is recognised and never made twice.
	Rotations []string `json:"rotations,omitempty"`
}

// Latest returns the newest version number.
func (k *KeyRecord) Latest() uint32 { return k.Versions[len(k.Versions)-1].Version }

func (k *KeyRecord) version(v uint32) *VersionRecord {
	if v == 0 || int(v) > len(k.Versions) {
		return nil
	}
	return &k.Versions[v-1]
}

// DisplayState is the state a user sees for version v.
func (k *KeyRecord) DisplayState(v *VersionRecord) string {
	switch {
	case v.State == StateDestroyed:
		return "destroyed"
	case v.State == StateDisabled:
		return "disabled"
	case v.Version == k.Latest():
		return "active"
	case v.Version < k.MinDecryptVersion:
		return "below-min-decrypt"
	default:
		return "decrypt-only"
	}
}

// View is a key without material, for listing and display.
type View struct {
	KeyRecord
	Algorithm      string
	RotationPeriod time.Duration
	NextRotation   time.Time
	KeepVersions   uint32
}

// loaded is a cached key with prepared crypto per version.
type loaded struct {
	rec      KeyRecord
	rev      int64
	digest   string // HMAC of the stored record bytes
	versions map[uint32]*kmscrypto.Version
	// unavailable says why an HSM-held version has no prepared crypto
	// (no HSM, or its key is missing from it).
	unavailable map[uint32]error
}

func (m *Manager) prepare(rec KeyRecord, rev int64, digest string) (*loaded, error) {
	l := &loaded{rec: rec, rev: rev, digest: digest, versions: map[uint32]*kmscrypto.Version{}}
	for _, v := range rec.Versions {
		if v.State == StateDestroyed {
			continue
		}
		alg, err := kmsfmt.ParseAlg(v.Alg)
		if err != nil {
			return nil, fmt.Errorf("key %s version %d: %v", rec.Name, v.Version, err)
		}
		if v.HSMKey != "" || alg == kmsfmt.AlgAES256GCMHSM {
			kv, err := m.hsmVersion(rec.Name, v)
			if err != nil {
				if l.unavailable == nil {
					l.unavailable = map[uint32]error{}
				}
				l.unavailable[v.Version] = err
				continue
			}
			l.versions[v.Version] = kv
			continue
		}
		kv, err := kmscrypto.NewVersion(alg, v.Material)
		if err != nil {
			return nil, fmt.Errorf("key %s version %d: %v", rec.Name, v.Version, err)
		}
		l.versions[v.Version] = kv
	}
	return l, nil
}

func cloneRecord(r KeyRecord) KeyRecord {
	r.Versions = append([]VersionRecord(nil), r.Versions...)
	r.Rotations = append([]string(nil), r.Rotations...)
	return r
}

func (m *Manager) view(l *loaded) View {
	rec := cloneRecord(l.rec)
	for i := range rec.Versions {
		rec.Versions[i].Material = nil
	}
	v := View{KeyRecord: rec}
	if c, err := m.table.Lookup(rec.Classification); err == nil {
		v.Algorithm = c.Algorithm.String()
		v.RotationPeriod = c.RotationPeriod
		v.NextRotation = rec.LastRotated.Add(c.RotationPeriod)
		v.KeepVersions = c.KeepVersions
	}
	return v
}
