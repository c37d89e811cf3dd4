package kms

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/kmscrypto"
	"github.com/wardproject/ward/internal/shared/kmsfmt"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

// Create creates key name with classification.
func (m *Manager) Create(ctx context.Context, name, classification, purpose string) (View, error) {
	fields := map[string]string{"classification": classification}
	if err := kmsfmt.ValidateKeyName(name); err != nil {
		return View{}, m.auditEnd(ctx, "key.create", name, 0, fields, errs.Errorf(errs.Invalid, "%v", err))
	}
	c, err := m.table.Lookup(classification)
	if err != nil {
		return View{}, m.auditEnd(ctx, "key.create", name, 0, fields, errs.Errorf(errs.Invalid, "%v", err))
	}
	if _, err := m.st.Get(ctx, m.path(name)); errors.Is(err, store.ErrNotFound) {
		// The name is free in storage; if the audit log knows the key, its
		// record was deleted or rolled back, and re-creating would hide it.
		if err := m.checkMissing(ctx, name); err != nil {
			return View{}, m.auditEnd(ctx, "key.create", name, 0, fields, err)
		}
	}
	if c.HardwareBacked && m.hsm == nil {
		return View{}, m.auditEnd(ctx, "key.create", name, 0, fields, m.noHSM(c.Name))
	}
	if err := m.auditStart(ctx, "key.create", name, fields); err != nil {
		return View{}, err
	}
	now := m.now().UTC()
	v1, err := m.newVersionRecord(c, 1, now)
	if err != nil {
		return View{}, m.auditEnd(ctx, "key.create", name, 0, fields, err)
	}
	rec := KeyRecord{Name: name, Revision: 1, Classification: c.Name, Purpose: purpose, Created: now, LastRotated: now, MinDecryptVersion: 1,
		Versions: []VersionRecord{v1}}
	b, err := json.Marshal(rec)
	if err != nil {
		m.dropHSMKey(v1.HSMKey)
		return View{}, err
	}
	rev, err := m.st.CompareAndSwap(ctx, m.path(name), b, 0)
	if err != nil {
		m.dropHSMKey(v1.HSMKey)
	}
	if errors.Is(err, store.ErrConflict) {
		return View{}, m.auditEnd(ctx, "key.create", name, 0, fields, errs.Errorf(errs.Exists, "key %q already exists: pick another name, or rotate it with `ward key rotate %s`", name, name))
	}
	if err != nil {
		return View{}, m.auditEnd(ctx, "key.create", name, 0, fields, errs.Errorf(errs.Unavailable, "storing key %q: %v", name, err))
	}
	l, err := m.prepare(rec, rev, m.recordDigest(b))
	if err != nil {
		return View{}, err
	}
	m.mu.Lock()
	m.cache[name], m.names[m.path(name)] = l, name
	m.mu.Unlock()
	return m.view(l), m.auditEnd(ctx, "key.create", name, 1, marked(fields, l), nil)
}

// Rotate adds a new active version. Versions beyond the classification's
// keep count are disabled (not destroyed: they can be re-enabled).
func (m *Manager) Rotate(ctx context.Context, name string) (View, error) {
	return m.rotate(ctx, name, false)
}

func (m *Manager) rotate(ctx context.Context, name string, onlyIfDue bool) (View, error) {
	fields := map[string]string{}
	if onlyIfDue {
		fields["trigger"] = "schedule"
	}
	if err := m.auditStart(ctx, "key.rotate", name, fields); err != nil {
		return View{}, err
	}
	var disabled []string
	skipped := false
	rid := ""
	if !onlyIfDue {
		rid = rotationID(ctx)
	}
	// A hardware-backed key's new version is generated in the HSM once,
	// and deleted from it again if no record ends up naming it.
	hsmKey, used := "", false
	defer func() {
		if hsmKey != "" && !used {
			m.dropHSMKey(hsmKey)
		}
	}()
	l, err := m.mutate(ctx, name, func(rec *KeyRecord) error {
		disabled, skipped = nil, false
		if rid != "" && slices.Contains(rec.Rotations, rid) {
			return errRotationReplayed
		}
		c, err := m.table.Lookup(rec.Classification)
		if err != nil {
			return errs.Errorf(errs.Precondition, "key %q: %v", name, err)
		}
		now := m.now().UTC()
		if onlyIfDue && now.Before(rec.LastRotated.Add(c.RotationPeriod)) {
			skipped = true
			return nil
		}
		nv := rec.Latest() + 1
		vr := VersionRecord{Version: nv, State: StateEnabled, Alg: c.Algorithm.String(), Created: now, StateChanged: now}
		if c.HardwareBacked {
			if hsmKey == "" {
				if hsmKey, err = m.newHSMKey(c.Name); err != nil {
					return err
				}
			}
			vr.HSMKey = hsmKey
		} else {
			vr.Material = kmscrypto.NewKey()
		}
		rec.Versions = append(rec.Versions, vr)
		rec.LastRotated = now
		if rid != "" {
			rec.Rotations = append(rec.Rotations, rid)
			if len(rec.Rotations) > maxRotationIDs {
				rec.Rotations = rec.Rotations[len(rec.Rotations)-maxRotationIDs:]
			}
		}
		if c.KeepVersions > 0 && nv > c.KeepVersions {
			for i := range rec.Versions {
				v := &rec.Versions[i]
				if v.Version <= nv-c.KeepVersions && v.State == StateEnabled {
					v.State, v.StateChanged = StateDisabled, now
					disabled = append(disabled, fmt.Sprint(v.Version))
				}
			}
		}
		return nil
	})
	if errors.Is(err, errRotationReplayed) {
		// A retry of a rotation already made (same caller and idempotency
		// key): answer with the key as it is, rotate nothing.
		if l, err = m.load(ctx, name); err != nil {
			return View{}, m.auditEnd(ctx, "key.rotate", name, 0, fields, err)
		}
		fields["replayed"] = "this request was already applied (same idempotency key); nothing rotated"
		return m.view(l), m.auditEnd(ctx, "key.rotate", name, l.rec.Latest(), fields, nil)
	}
	if err != nil {
		return View{}, m.auditEnd(ctx, "key.rotate", name, 0, fields, err)
	}
	used = !skipped
	if skipped {
		fields["skipped"] = "another authority rotated it first"
		return m.view(l), m.auditEnd(ctx, "key.rotate", name, l.rec.Latest(), marked(fields, l), nil)
	}
	if len(disabled) > 0 {
		fields["disabled_versions"] = strings.Join(disabled, ",")
	}
	return m.view(l), m.auditEnd(ctx, "key.rotate", name, l.rec.Latest(), marked(fields, l), nil)
}

// RotateDue rotates every key whose rotation period has passed. It is
// safe to run on several authorities at once: compare-and-swap lets one win.
func (m *Manager) RotateDue(ctx context.Context) (rotated []string, err error) {
	keys, err := m.listHealthy(ctx)
	if err != nil {
		return nil, err
	}
	now := m.now()
	for _, k := range keys {
		if k.RotationPeriod == 0 || now.Before(k.NextRotation) {
			continue
		}
		v, err := m.rotate(ctx, k.Name, true)
		if err != nil {
			m.log.Error("kms: scheduled rotation failed", "key", k.Name, "err", err)
			continue
		}
		if v.Latest() > k.Latest() {
			rotated = append(rotated, k.Name)
		}
	}
	return rotated, nil
}

// SetMinDecryptVersion sets the oldest version that may decrypt.
func (m *Manager) SetMinDecryptVersion(ctx context.Context, name string, minV uint32) (View, error) {
	fields := map[string]string{"min_decrypt_version": fmt.Sprint(minV)}
	if err := m.auditStart(ctx, "key.config", name, fields); err != nil {
		return View{}, err
	}
	l, err := m.mutate(ctx, name, func(rec *KeyRecord) error {
		if minV == 0 || minV > rec.Latest() {
			return errs.Errorf(errs.Invalid, "min-decrypt-version %d for key %q is out of range: use 1..%d (the latest version)", minV, name, rec.Latest())
		}
		rec.MinDecryptVersion = minV
		return nil
	})
	if err != nil {
		return View{}, m.auditEnd(ctx, "key.config", name, 0, fields, err)
	}
	return m.view(l), m.auditEnd(ctx, "key.config", name, 0, marked(fields, l), nil)
}

// SetEnabled disables or re-enables a version. The latest version cannot
// be disabled (rotate first); a destroyed version cannot come back.
func (m *Manager) SetEnabled(ctx context.Context, name string, version uint32, enabled bool) (View, error) {
	op := "key.disable"
	if enabled {
		op = "key.enable"
	}
	if err := m.auditStart(ctx, op, name, map[string]string{"version": fmt.Sprint(version)}); err != nil {
		return View{}, err
	}
	l, err := m.mutate(ctx, name, func(rec *KeyRecord) error {
		v := rec.version(version)
		if v == nil {
			return errs.Errorf(errs.NotFound, "key %q has no version %d (versions 1..%d)", name, version, rec.Latest())
		}
		if v.State == StateDestroyed {
			return errs.Errorf(errs.Precondition, "key %q version %d was destroyed and cannot be enabled or disabled", name, version)
		}
		if !enabled && version == rec.Latest() {
			return errs.Errorf(errs.Precondition, "key %q version %d is the active version: rotate the key first, then disable it", name, version)
		}
		want := StateDisabled
		if enabled {
			want = StateEnabled
		}
		if v.State != want {
			v.State, v.StateChanged = want, m.now().UTC()
		}
		return nil
	})
	if err != nil {
		return View{}, m.auditEnd(ctx, op, name, version, nil, err)
	}
	return m.view(l), m.auditEnd(ctx, op, name, version, marked(nil, l), nil)
}

// Destroy erases a version's material for good (crypto-shredding).
func (m *Manager) Destroy(ctx context.Context, name string, version uint32) (View, error) {
	if err := m.auditStart(ctx, "key.destroy", name, map[string]string{"version": fmt.Sprint(version)}); err != nil {
		return View{}, err
	}
	hsmKey := ""
	l, err := m.mutate(ctx, name, func(rec *KeyRecord) error {
		hsmKey = ""
		v := rec.version(version)
		if v == nil {
			return errs.Errorf(errs.NotFound, "key %q has no version %d (versions 1..%d)", name, version, rec.Latest())
		}
		if v.State == StateDestroyed {
			return errs.Errorf(errs.Precondition, "key %q version %d is already destroyed", name, version)
		}
		if version == rec.Latest() {
			return errs.Errorf(errs.Precondition, "key %q version %d is the active version: rotate the key first, then destroy it", name, version)
		}
		for i := range v.Material {
			v.Material[i] = 0
		}
		hsmKey = v.HSMKey
		v.Material, v.State, v.StateChanged = nil, StateDestroyed, m.now().UTC()
		return nil
	})
	if err != nil {
		return View{}, m.auditEnd(ctx, "key.destroy", name, version, nil, err)
	}
	fields := map[string]string{"destroyed_version": fmt.Sprint(version)}
	// The record no longer names the HSM key: delete it from the HSM. If
	// that fails the version is still unusable through ward; the event
	// says so, for the HSM's own administrator.
	if hsmKey != "" {
		if err := m.dropHSMKey(hsmKey); err != nil {
			fields["hsm_key_left"] = hsmKey
		}
	}
	return m.view(l), m.auditEnd(ctx, "key.destroy", name, version, marked(fields, l), nil)
}

// maxRotationIDs is how many idempotency keys of manual rotations a key
// record remembers.
const maxRotationIDs = 16

var errRotationReplayed = errors.New("rotation already applied")

// rotationID is the digest a key record keeps of the caller's idempotency
// key (reqctx.Caller.IdempotencyKey), or "" without one.
func rotationID(ctx context.Context) string {
	c := reqctx.From(ctx)
	if c.IdempotencyKey == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(c.Actor + "\x00" + c.IdempotencyKey))
	return hex.EncodeToString(sum[:16])
}
