package checkpoint

import (
	"bytes"
	"crypto"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
)

// Witness remembers the newest checkpoint it verified for each log and the
// key that signs the log, the way Certificate Transparency monitors and the
// Go checksum database client do. Every later head must prove it extends
// the remembered checkpoint (RFC 6962 consistency), so a log that was
// truncated and given an older head back, forked, or rewritten is caught;
// a log of a known origin under another signing key (a log wiped in storage
// comes back under a new key with an empty history) is refused until the
// key is accepted. It never moves backwards.
//
// `ward audit verify` keeps its witness in a directory (DirMemory), every
// agent in one file of its data directory (FileMemory).
type Witness struct {
	mu  sync.Mutex
	mem Memory
}

// Memory is where a Witness keeps what it remembers.
type Memory interface {
	// Lock keeps other writers of the same memory (other processes too)
	// out until unlock is called.
	Lock() (unlock func(), err error)
	// PinnedKey is the signing key id remembered for origin ("" if none)
	// and where it is remembered.
	PinnedKey(origin string) (keyID, where string, err error)
	// PinKey remembers cp's key as the signing key of cp.Origin.
	PinKey(cp Checkpoint) error
	// Newest is the newest checkpoint remembered for the log of origin
	// signed by keyID (nil if none) and where it is remembered (also when
	// there is none yet).
	Newest(origin, keyID string) (cp *Checkpoint, where string, err error)
	// Put remembers cp, signed by pub, as the newest of its log.
	Put(cp Checkpoint, pub crypto.PublicKey) error
}

// NewWitness returns a witness keeping its memory in m.
func NewWitness(m Memory) *Witness { return &Witness{mem: m} }

// CheckKey returns a *KeyChangedError if head's origin is remembered under
// another signing key.
func (w *Witness) CheckKey(head Checkpoint) error {
	old, where, err := w.mem.PinnedKey(head.Origin)
	if err != nil {
		return err
	}
	if old != "" && old != head.KeyID {
		return &KeyChangedError{Origin: head.Origin, OldKeyID: old, NewKeyID: head.KeyID, Path: where}
	}
	return nil
}

// CheckLog returns the checkpoint remembered for head's log (nil if none)
// and where it is remembered, or a *RollbackError if head is behind it (a
// smaller size, another root at the same size, another origin). A larger
// head must still be proven to extend it: Advance checks a consistency
// proof; a caller that recomputes the tree from every record calls Remember.
func (w *Witness) CheckLog(head Checkpoint) (remembered *Checkpoint, where string, err error) {
	old, where, err := w.mem.Newest(head.Origin, head.KeyID)
	if err != nil {
		return nil, where, err
	}
	if old != nil {
		if err := Compare(*old, head); err != nil {
			err.Path = where
			return old, where, err
		}
	}
	return old, where, nil
}

// Advance checks head against the memory and remembers it: head must be
// signed by pub, its origin must not be remembered under another key
// (*KeyChangedError), and it must extend the remembered checkpoint, proven
// by consistencyProof, the RFC 6962 proof from the remembered size to
// head's (*RollbackError otherwise). Nothing changes on an error.
func (w *Witness) Advance(head Checkpoint, pub crypto.PublicKey, consistencyProof [][]byte) error {
	return w.remember(head, pub, func(old Checkpoint) error {
		return proof.VerifyConsistency(rfc6962.DefaultHasher, old.Size, head.Size, consistencyProof, old.RootHash, head.RootHash)
	})
}

// Remember is Advance for a caller that proved head extends the checkpoint
// CheckLog returned itself (`ward audit verify` recomputes the tree from
// every record). It still refuses a head that is behind the memory or
// signed by another key than the one remembered for its origin.
func (w *Witness) Remember(head Checkpoint, pub crypto.PublicKey) error {
	return w.remember(head, pub, nil)
}

func (w *Witness) remember(head Checkpoint, pub crypto.PublicKey, consistent func(old Checkpoint) error) error {
	if err := Verify(head, pub); err != nil {
		return err
	}
	return w.locked(func() error {
		if err := w.CheckKey(head); err != nil {
			return err
		}
		old, where, err := w.CheckLog(head)
		if err != nil {
			return err
		}
		if old != nil {
			if old.Size == head.Size {
				return nil // the same checkpoint: nothing to record
			}
			if consistent != nil {
				if err := consistent(*old); err != nil {
					return &RollbackError{Remembered: *old, Head: head, Path: where, Inconsistent: err}
				}
			}
		}
		return w.mem.Put(head, pub)
	})
}

// locked runs f holding the witness's and the memory's locks.
func (w *Witness) locked(f func() error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	unlock, err := w.mem.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	return f()
}

// AcceptKey remembers head's key as its origin's signing key from now on
// (an operator accepted a new key, e.g. after a deliberate
// re-initialisation of the authority).
func (w *Witness) AcceptKey(head Checkpoint) error {
	if err := head.Check(); err != nil {
		return fmt.Errorf("checkpoint memory: %w", err)
	}
	return w.locked(func() error { return w.mem.PinKey(head) })
}

// Compare returns a *RollbackError if head is behind remembered: another
// origin, a smaller size, or the same size with another root. A larger head
// must still be proven consistent with remembered.
func Compare(remembered, head Checkpoint) *RollbackError {
	if head.Origin != remembered.Origin || head.Size < remembered.Size ||
		(head.Size == remembered.Size && !bytes.Equal(head.RootHash, remembered.RootHash)) {
		return &RollbackError{Remembered: remembered, Head: head}
	}
	return nil
}

// RollbackError says that a log's head does not extend the checkpoint
// remembered for it: it went backwards, forked, or rewrote its history.
type RollbackError struct {
	Remembered, Head Checkpoint
	Path             string // where Remembered is remembered
	// Inconsistent is why a larger head was not proven to extend
	// Remembered (nil when the head is smaller, forked or of another log).
	Inconsistent error
}

// Reason names what happened in a few words: "went backwards", "forked",
// "inconsistent" (a larger head that does not extend the remembered one)
// or "other log".
func (e *RollbackError) Reason() string {
	switch {
	case e.Head.Origin != e.Remembered.Origin:
		return "other log"
	case e.Inconsistent != nil:
		return "inconsistent"
	case e.Head.Size == e.Remembered.Size:
		return "forked"
	}
	return "went backwards"
}

func (e *RollbackError) Error() string {
	r, h := e.Remembered, e.Head
	var what string
	switch e.Reason() {
	case "other log":
		what = fmt.Sprintf("was REPLACED by log %q", h.Origin)
	case "inconsistent":
		what = fmt.Sprintf("REWROTE ITS HISTORY (the head is larger but does not extend the remembered checkpoint: %v)", e.Inconsistent)
	case "forked":
		what = "FORKED"
	default:
		what = "went BACKWARDS"
	}
	return fmt.Sprintf("AUDIT LOG ROLLBACK: log %q %s: it now has %d events with root %s (signed %s), but %d events with root %s (signed %s) were verified earlier and remembered in %s; "+
		"the stored log was truncated, rolled back or replaced. Treat it as an incident: keep the remembered checkpoint, compare with other verifiers and backups. "+
		"Only if the authority was deliberately re-initialised, delete that file",
		r.Origin, what, h.Size, hex.EncodeToString(h.RootHash), h.Time.UTC().Format(time.RFC3339),
		r.Size, hex.EncodeToString(r.RootHash), r.Time.UTC().Format(time.RFC3339), e.Path)
}

// KeyChangedError says that a log's origin was verified earlier under
// another signing key.
type KeyChangedError struct {
	Origin             string
	OldKeyID, NewKeyID string
	Path               string // where OldKeyID is remembered
}

func (e *KeyChangedError) Error() string {
	return fmt.Sprintf("AUDIT SIGNING KEY CHANGED: the audit signing key of %s changed from %s to %s (the old key is remembered in %s). "+
		"An authority's audit signing key never changes: its audit log was wiped or replaced in storage (a new log forgets every earlier event, "+
		"including which key versions were destroyed), or this is another authority using the same trust domain. Treat it as an incident and find out why. "+
		"Only if the authority was deliberately re-initialised, run `ward audit verify --accept-new-key`",
		e.Origin, e.OldKeyID, e.NewKeyID, e.Path)
}
