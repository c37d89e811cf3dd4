package barrier

import (
	"bytes"
	"context"
	"crypto/cipher"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/wardproject/ward/internal/authority/store"
)

// RotationKey is where the state of the latest barrier rotation lives in
// the raw store (not secret: a term, a cursor and counters).
const RotationKey = "core/rotation"

// RotationState is the progress of the rewrite that moves every value to
// the newest keyring term. It is stored at RotationKey with every batch the
// rewrite writes, so a crashed rewrite resumes after the last key it
// moved.
type RotationState struct {
	// Term is the keyring term values are moved to.
	Term    uint32    `json:"term"`
	Started time.Time `json:"started"`
	// Cursor is the last storage key the rewrite has passed (keys are
	// visited in order); "" before the first batch of a pass.
	Cursor string `json:"cursor"`
	// Pass counts the passes over the store (another authority with an
	// older keyring may write under an older term during a pass).
	Pass int `json:"pass"`
	// Total is the number of values in the store at the pass's start;
	// Scanned of them were visited, Rewritten moved to Term.
	Total     int64 `json:"total"`
	Scanned   int64 `json:"scanned"`
	Rewritten int64 `json:"rewritten"`
	// Failed counts values that could not be opened (altered in storage);
	// FailedKeys names the first few. They stay under their old term.
	Failed     int64     `json:"failed,omitempty"`
	FailedKeys []string  `json:"failed_keys,omitempty"`
	Done       bool      `json:"done"`
	Finished   time.Time `json:"finished,omitzero"`
}

// ErrRotationRunning: a rotation's rewrite has not finished yet.
var ErrRotationRunning = errors.New("a barrier rotation is still rewriting values to its term: wait for it to finish (see `ward operator rotate --status`)")

// Rotate adds a new barrier key to the keyring and makes it the active
// term: new writes use it, values under older terms stay readable. It
// writes the keyring (compare-and-swap on its revision) together with a
// fresh RotationState, so Rewrite can move the old values. It refuses
// while an earlier rotation's rewrite is unfinished.
func (b *Barrier) Rotate(ctx context.Context, now time.Time) (uint32, error) {
	b.reloadMu.Lock()
	defer b.reloadMu.Unlock()
	root, err := b.rootKey()
	if err != nil {
		return 0, err
	}
	defer clear(root)
	if st, err := b.RotationStatus(ctx); err != nil {
		return 0, err
	} else if st != nil && !st.Done {
		return 0, fmt.Errorf("barrier: %w (term %d, %d of %d values visited)", ErrRotationRunning, st.Term, st.Scanned, st.Total)
	}
	kv, err := b.raw.Get(ctx, KeyringKey)
	if err != nil {
		return 0, fmt.Errorf("barrier: reading %s: %w", KeyringKey, err)
	}
	kr, err := openKeyring(root, kv.Value)
	if errors.Is(err, ErrBadRootKey) {
		return 0, fmt.Errorf("barrier: the stored keyring is no longer wrapped under the root key this authority was unsealed with: another authority rekeyed it. Seal and unseal this authority with the new shares, or rotate on the authority that rekeyed; nothing was changed")
	}
	if err != nil {
		return 0, err
	}
	defer kr.zero()
	term := uint32(0)
	for _, k := range kr.Keys {
		term = max(term, k.Term)
	}
	term++
	kr.Keys = append(kr.Keys, keyJSON{Term: term, Key: randomKey(), Created: now.UTC()})
	kr.ActiveTerm = term
	pt, err := json.Marshal(kr)
	if err != nil {
		return 0, fmt.Errorf("barrier: encoding keyring: %w", err)
	}
	defer clear(pt)
	rootAEAD, err := newAEAD(root)
	if err != nil {
		return 0, err
	}
	st, _ := json.Marshal(RotationState{Term: term, Started: now.UTC(), Pass: 1})
	rev, err := b.raw.Batch(ctx, []store.Op{
		{Key: KeyringKey, Value: sealValue(rootAEAD, 0, KeyringKey, pt), ExpectRevision: kv.Revision},
		{Key: RotationKey, Value: st, ExpectRevision: -1},
	})
	if errors.Is(err, store.ErrConflict) {
		return 0, fmt.Errorf("barrier: the keyring changed while rotating (another authority rotated or rekeyed): nothing was changed; retry")
	}
	if err != nil {
		return 0, fmt.Errorf("barrier: writing the rotated keyring: %w; nothing was changed", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.aeads == nil {
		return term, nil // sealed meanwhile: the next unseal loads it
	}
	if err := b.installLocked(kr, rev, root); err != nil {
		return 0, err
	}
	return term, nil
}

// Rekey rewraps the keyring under newRoot after checking that oldRoot
// opens it, writing the ops in with (the seal's new configuration) in the
// same atomic batch, conditional on the keyring not having changed. The
// barrier keys, and so every stored value, stay as they are.
func (b *Barrier) Rekey(ctx context.Context, oldRoot, newRoot []byte, with ...store.Op) error {
	if len(newRoot) != KeySize {
		return fmt.Errorf("barrier: new root key is %d bytes, want %d", len(newRoot), KeySize)
	}
	b.reloadMu.Lock()
	defer b.reloadMu.Unlock()
	kv, err := b.raw.Get(ctx, KeyringKey)
	if err != nil {
		return fmt.Errorf("barrier: reading %s: %w", KeyringKey, err)
	}
	kr, err := openKeyring(oldRoot, kv.Value)
	if err != nil {
		return err
	}
	defer kr.zero()
	pt, err := json.Marshal(kr)
	if err != nil {
		return fmt.Errorf("barrier: encoding keyring: %w", err)
	}
	defer clear(pt)
	rootAEAD, err := newAEAD(newRoot)
	if err != nil {
		return err
	}
	ops := append([]store.Op{{Key: KeyringKey, Value: sealValue(rootAEAD, 0, KeyringKey, pt), ExpectRevision: kv.Revision}}, with...)
	rev, err := b.raw.Batch(ctx, ops)
	if errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("barrier: the keyring or the seal configuration changed during the rekey (another authority rotated or rekeyed): nothing was changed; retry")
	}
	if err != nil {
		return fmt.Errorf("barrier: writing the rewrapped keyring: %w; nothing was changed", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.aeads != nil {
		clear(b.root)
		b.root, b.keyringRev = bytes.Clone(newRoot), rev
	}
	return nil
}

// rootKey returns a copy of the root key, or ErrSealed.
func (b *Barrier) rootKey() ([]byte, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.aeads == nil || b.root == nil {
		return nil, fmt.Errorf("barrier: %w", ErrSealed)
	}
	return bytes.Clone(b.root), nil
}

// reloadFor is called when a value names a term this barrier does not
// hold: if the stored keyring changed since it was loaded (another
// authority rotated), it is re-read with the root key. It returns the
// AEAD for term, or nil.
func (b *Barrier) reloadFor(term uint32) cipher.AEAD {
	b.reloadMu.Lock()
	defer b.reloadMu.Unlock()
	b.mu.RLock()
	a, root, rev := b.aeads[term], bytes.Clone(b.root), b.keyringRev
	sealed := b.aeads == nil
	b.mu.RUnlock()
	defer clear(root)
	if a != nil || sealed || root == nil {
		return a
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := b.raw.Get(ctx, KeyringKey)
	if err != nil || kv.Revision == rev {
		return nil
	}
	kr, err := openKeyring(root, kv.Value)
	if err != nil {
		return nil
	}
	defer kr.zero()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.aeads == nil || !bytes.Equal(b.root, root) {
		return nil
	}
	if err := b.installLocked(kr, kv.Revision, root); err != nil {
		return nil
	}
	return b.aeads[term]
}

// OpenRaw decrypts a value as stored in the raw store under key (a backup
// reads its audit log this way). The barrier must be unsealed.
func (b *Barrier) OpenRaw(key string, value []byte) ([]byte, error) {
	lookup, err := b.lookup()
	if err != nil {
		return nil, fmt.Errorf("barrier: open %q: %w", key, err)
	}
	_, pt, err := openValue(lookup, key, value)
	return pt, err
}

// ActiveTerm returns the keyring term new values are written under (0
// while sealed).
func (b *Barrier) ActiveTerm() uint32 {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.active
}

// RotationStatus reads the stored rotation state (nil if the barrier was
// never rotated).
func (b *Barrier) RotationStatus(ctx context.Context) (*RotationState, error) {
	kv, err := b.raw.Get(ctx, RotationKey)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("barrier: reading %s: %w", RotationKey, err)
	}
	var st RotationState
	if err := json.Unmarshal(kv.Value, &st); err != nil {
		return nil, fmt.Errorf("barrier: %s does not decode: %w", RotationKey, err)
	}
	return &st, nil
}

// rewriteBatch bounds one rewrite batch (ops and value bytes).
const (
	rewriteBatchOps   = 256
	rewriteBatchBytes = 512 << 10
	maxRewritePasses  = 5
	maxFailedKeys     = 10
)

// Rewrite moves every value stored under an older term to the rotation's
// term, in key order, in batches conditional on each value's revision (a
// value changed meanwhile is re-read and moved alone). Each batch also
// stores the progress, so after a crash Rewrite continues after the last
// moved key. progress (optional) sees the state after each batch. A pass
// that finds values under an older term written during it (by an
// authority that had not yet loaded the new keyring) is followed by
// another, up to a few. It returns the final state; nothing to do (no
// rotation, or done) returns the stored state.
func (b *Barrier) Rewrite(ctx context.Context, now func() time.Time, progress func(RotationState)) (*RotationState, error) {
	st, err := b.RotationStatus(ctx)
	if err != nil || st == nil || st.Done {
		return st, err
	}
	if b.ActiveTerm() < st.Term {
		return st, fmt.Errorf("barrier: the rotation's term %d is not loaded here (active %d): seal and unseal to reload the keyring", st.Term, b.ActiveTerm())
	}
	for {
		kvs, err := b.raw.List(ctx, "")
		if err != nil {
			return st, fmt.Errorf("barrier: listing values to rewrite: %w", err)
		}
		var total int64
		for _, kv := range kvs {
			if !reserved(kv.Key) {
				total++
			}
		}
		st.Total = total
		stale, err := b.rewritePass(ctx, kvs, st, progress)
		if err != nil {
			return st, err
		}
		if stale == 0 || st.Pass >= maxRewritePasses {
			st.Done, st.Finished = true, now().UTC()
			if err := b.saveRotation(ctx, st); err != nil {
				return st, err
			}
			if progress != nil {
				progress(*st)
			}
			return st, nil
		}
		st.Pass++
		st.Cursor, st.Scanned = "", 0
		if err := b.saveRotation(ctx, st); err != nil {
			return st, err
		}
	}
}

func (b *Barrier) saveRotation(ctx context.Context, st *RotationState) error {
	v, _ := json.Marshal(st)
	if _, err := b.raw.Put(ctx, RotationKey, v); err != nil {
		return fmt.Errorf("barrier: saving rotation progress: %w", err)
	}
	return nil
}

// rewritePass visits kvs after st.Cursor. It returns how many values it
// found still under an older term after the cursor when the pass started
// over values it had already passed (0 when a pass was clean).
func (b *Barrier) rewritePass(ctx context.Context, kvs []store.KV, st *RotationState, progress func(RotationState)) (int, error) {
	start, _ := slices.BinarySearchFunc(kvs, st.Cursor, func(kv store.KV, c string) int { return strings.Compare(kv.Key, c) })
	if st.Cursor != "" && start < len(kvs) && kvs[start].Key == st.Cursor {
		start++
	}
	// Values before the cursor were passed by an earlier run of this pass.
	var ops []store.Op
	var opBytes int
	moved := 0
	flush := func(cursor string, scanned int64) error {
		prevCursor, prevScanned, prevRewritten := st.Cursor, st.Scanned, st.Rewritten
		st.Cursor = cursor
		st.Scanned += scanned
		st.Rewritten += int64(len(ops))
		v, _ := json.Marshal(st)
		batch := append(ops, store.Op{Key: RotationKey, Value: v, ExpectRevision: -1})
		_, err := b.raw.Batch(ctx, batch)
		if errors.Is(err, store.ErrConflict) {
			// A value changed since listed: move each alone.
			st.Rewritten = prevRewritten
			for _, op := range ops {
				if err := b.rewriteOne(ctx, op.Key, st); err != nil {
					st.Cursor, st.Scanned = prevCursor, prevScanned
					return fmt.Errorf("barrier: rewriting %q: %w (the rewrite resumes from the last saved key)", op.Key, err)
				}
			}
			v, _ = json.Marshal(st)
			_, err = b.raw.Put(ctx, RotationKey, v)
		}
		if err != nil {
			st.Cursor, st.Scanned, st.Rewritten = prevCursor, prevScanned, prevRewritten
			return fmt.Errorf("barrier: rewriting values up to %q: %w (the rewrite resumes from the last saved key)", cursor, err)
		}
		ops, opBytes = ops[:0], 0
		if progress != nil {
			progress(*st)
		}
		return nil
	}
	maxOps := max(1, min(rewriteBatchOps, b.raw.MaxBatch()-1))
	var scanned int64
	for i := start; i < len(kvs); i++ {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		kv := kvs[i]
		if reserved(kv.Key) {
			continue
		}
		scanned++
		t, ok := ValueTerm(kv.Value)
		if ok && t < st.Term {
			op, err := b.reseal(kv.Key, kv.Value, kv.Revision)
			if errors.Is(err, ErrSealed) {
				return 0, fmt.Errorf("barrier: rewrite stopped: %w", err)
			}
			if err != nil {
				st.Failed++
				if len(st.FailedKeys) < maxFailedKeys {
					st.FailedKeys = append(st.FailedKeys, kv.Key)
				}
			} else {
				ops = append(ops, op)
				opBytes += len(op.Value)
				moved++
			}
		}
		if len(ops) >= maxOps || opBytes >= rewriteBatchBytes || scanned >= 4*rewriteBatchOps {
			if err := flush(kv.Key, scanned); err != nil {
				return 0, err
			}
			scanned = 0
		}
	}
	last := st.Cursor
	if len(kvs) > 0 {
		last = kvs[len(kvs)-1].Key
	}
	if err := flush(last, scanned); err != nil {
		return 0, err
	}
	if moved == 0 && start == 0 {
		return 0, nil // a full pass moved nothing: all under the term
	}
	// Check the whole store once more: values written under an older
	// term meanwhile need another pass.
	kvs, err := b.raw.List(ctx, "")
	if err != nil {
		return 0, fmt.Errorf("barrier: listing values to check the rewrite: %w", err)
	}
	stale := 0
	failed := make(map[string]bool, len(st.FailedKeys))
	for _, k := range st.FailedKeys {
		failed[k] = true
	}
	for _, kv := range kvs {
		if t, ok := ValueTerm(kv.Value); ok && !reserved(kv.Key) && t < st.Term && !failed[kv.Key] {
			stale++
		}
	}
	if stale > 0 && st.Failed > int64(len(st.FailedKeys)) {
		// Unnamed failures cannot be told apart: do not loop on them.
		return 0, nil
	}
	return stale, nil
}

// reseal re-encrypts one raw value under the active term as a
// conditional op.
func (b *Barrier) reseal(key string, value []byte, rev int64) (store.Op, error) {
	lookup, err := b.lookup()
	if err != nil {
		return store.Op{}, ErrSealed
	}
	_, pt, err := openValue(lookup, key, value)
	if err != nil {
		return store.Op{}, err
	}
	defer clear(pt)
	a, term, err := b.activeAEAD()
	if err != nil {
		return store.Op{}, err
	}
	return store.Op{Key: key, Value: sealValue(a, term, key, pt), ExpectRevision: rev}, nil
}

// rewriteOne moves one key after a conflict, re-reading it each time.
func (b *Barrier) rewriteOne(ctx context.Context, key string, st *RotationState) error {
	for range 5 {
		kv, err := b.raw.Get(ctx, key)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if t, ok := ValueTerm(kv.Value); !ok || t >= st.Term {
			return nil
		}
		op, err := b.reseal(key, kv.Value, kv.Revision)
		if err != nil {
			st.Failed++
			return nil
		}
		if _, err := b.raw.CompareAndSwap(ctx, key, op.Value, kv.Revision); err == nil {
			st.Rewritten++
			return nil
		} else if !errors.Is(err, store.ErrConflict) {
			return err
		}
	}
	return nil
}
