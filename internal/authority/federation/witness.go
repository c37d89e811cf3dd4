package federation

// Audit witnesses. Every authority signs checkpoints of its audit log; a
// log that is rolled back in storage (truncated, an old head put back) is
// internally consistent again, so only someone who remembers a newer
// checkpoint can tell. Federated authorities are those someones: each
// periodically fetches every https_spiffe peer's latest signed checkpoint
// over the bundle endpoint (WitnessPath, mTLS between server IDs as on the
// revocation channel), verifies it with the peer's checkpoint key (pinned
// on first use, never silently replaced), proves with an RFC 6962
// consistency proof that it extends the checkpoint it witnessed before
// (checkpoint.Witness over a memory kept behind the barrier, which never
// moves backwards) and cosigns it with its own audit checkpoint key. The
// peer receives that cosignature in the answer to its own next fetch, so
// `ward audit verify` on the peer lists who witnessed its log at which
// size. A log that went backwards, forked or rewrote its history raises an
// alert that stays until the relationship is removed: error log, metric
// ward_federation_witness_alert, a /healthz warning, an audit event
// federation.witness (result error) and `ward federation show`.

import (
	"bytes"
	"context"
	"crypto"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/checkpoint"
	"github.com/wardproject/ward/internal/shared/errs"
)

const (
	// WitnessPath is where the https_spiffe bundle endpoint serves this
	// authority's latest signed audit checkpoint, a consistency proof from
	// the size given in ?from=, and the cosignature this authority made on
	// the caller's log, to federated authorities (mTLS).
	WitnessPath = "/ward/federation/v1/checkpoint"
	// MaxWitnessAnswer bounds one answer (bytes of JSON): a checkpoint, a
	// proof of at most maxProofHashes hashes, a cosignature and a key.
	MaxWitnessAnswer = 64 << 10
	// maxProofHashes bounds a consistency proof (a proof between two trees
	// of up to 2^64 leaves has fewer than 2*64 hashes).
	maxProofHashes = 128

	witnessPrefix  = "federation-witness/"
	cosignedPrefix = "federation-cosigned/"
	// witnessHeader marks a ward witness answer (another SPIFFE
	// implementation answers any path with its bundle).
	witnessHeader = "Ward-Witness"
)

// Witness alert reasons (the metric's reason label).
const (
	AlertWentBackwards = "went_backwards"
	AlertForked        = "forked"
	AlertInconsistent  = "inconsistent"
	AlertOtherLog      = "other_log"
	AlertKeyChanged    = "key_changed"
)

// CheckpointSource is this authority's audit log as the bundle endpoint
// serves it to witnesses.
type CheckpointSource interface {
	// LatestCheckpoint is the newest signed checkpoint (it may lag the
	// head by the log's checkpoint interval), never smaller than atLeast
	// unless the log is.
	LatestCheckpoint(ctx context.Context, atLeast uint64) (checkpoint.Checkpoint, crypto.PublicKey, error)
	ConsistencyProof(ctx context.Context, oldSize, newSize uint64) ([][]byte, error)
}

// WitnessAnswer is what the endpoint answers at WitnessPath.
type WitnessAnswer struct {
	Checkpoint checkpoint.Checkpoint `json:"checkpoint"`
	// PublicKeyPEM is the key that signs the log's checkpoints (and this
	// authority's cosignatures); a witness pins it on first use.
	PublicKeyPEM string `json:"public_key_pem"`
	// Consistency is the RFC 6962 proof from size From to the checkpoint's
	// size (empty when From is 0 or the size itself).
	From        uint64   `json:"from"`
	Consistency [][]byte `json:"consistency,omitempty"`
	// Cosignature is the newest cosignature this authority made on the
	// caller's log, if it witnessed it.
	Cosignature *checkpoint.Cosignature `json:"cosignature,omitempty"`
}

// WitnessAlert is evidence that a peer's log did not extend what this
// authority witnessed: both checkpoints are signed by the peer.
type WitnessAlert struct {
	Reason     string                 `json:"reason"`
	Error      string                 `json:"error"`
	At         time.Time              `json:"at"`
	Remembered *checkpoint.Checkpoint `json:"remembered,omitempty"`
	Head       checkpoint.Checkpoint  `json:"head"`
	// Count is how many fetches found it since (the alert never clears
	// on its own).
	Count int `json:"count"`
}

// witnessRecord is what this authority remembers of one peer's log, under
// witnessPrefix+td (behind the barrier).
type witnessRecord struct {
	TrustDomain  string                 `json:"trust_domain"`
	Origin       string                 `json:"origin,omitempty"`
	KeyID        string                 `json:"key_id,omitempty"`
	PublicKeyPEM string                 `json:"public_key_pem,omitempty"`
	PinnedAt     time.Time              `json:"pinned_at,omitzero"`
	Checkpoint   *checkpoint.Checkpoint `json:"checkpoint,omitempty"`
	WitnessedAt  time.Time              `json:"witnessed_at,omitzero"`
	// Cosignature is this authority's, on Checkpoint.
	Cosignature *checkpoint.Cosignature `json:"cosignature,omitempty"`
	Alert       *WitnessAlert           `json:"alert,omitempty"`
}

// cosignedRecord is the newest cosignature a peer made on this
// authority's log, under cosignedPrefix+td.
type cosignedRecord struct {
	TrustDomain string                 `json:"trust_domain"`
	Cosignature checkpoint.Cosignature `json:"cosignature"`
	ReceivedAt  time.Time              `json:"received_at"`
}

// witnessState is a loaded witnessRecord with its store revision and the
// last round's outcome (not stored).
type witnessState struct {
	rec         witnessRecord
	rev         int64
	pub         crypto.PublicKey
	lastAttempt time.Time
	lastError   string
}

// WitnessStatus is what this authority witnessed of one peer's audit log.
type WitnessStatus struct {
	// KeyID of the peer's pinned checkpoint key ("" before the first
	// witnessed checkpoint) and when it was pinned.
	KeyID    string
	PinnedAt time.Time
	// Checkpoint is the newest witnessed (nil if none), WitnessedAt when.
	Checkpoint  *checkpoint.Checkpoint
	WitnessedAt time.Time
	LastAttempt time.Time
	LastError   string
	// Alert is set once the peer's log went backwards, forked or changed
	// key; it stays until the relationship is removed.
	Alert *WitnessAlert
	// CosignedByPeer is the newest cosignature the peer made on this
	// authority's log (nil if none).
	CosignedByPeer *checkpoint.Cosignature
	// OwnLogAlert is set while this authority's own audit log does not
	// extend CosignedByPeer (Options.OwnLog): it was rolled back.
	OwnLogAlert *WitnessAlert
}

// ReceivedCosignature is a peer's cosignature on this authority's log,
// with the peer's checkpoint key pinned by this authority's witness (which
// verified it).
type ReceivedCosignature struct {
	TrustDomain  spiffeid.TrustDomain
	Cosignature  checkpoint.Cosignature
	PublicKeyPEM []byte
	ReceivedAt   time.Time
}

func witnessKey(td spiffeid.TrustDomain) string  { return witnessPrefix + td.Name() }
func cosignedKey(td spiffeid.TrustDomain) string { return cosignedPrefix + td.Name() }

// Origin is the audit log origin of trust domain td's authority.
func Origin(td spiffeid.TrustDomain) string { return "ward/" + td.Name() }

// loadWitness reads the witnessed state and the received cosignatures
// (after Open and Reload).
func (m *Manager) loadWitness(ctx context.Context) error {
	kvs, err := m.opts.Store.List(ctx, witnessPrefix)
	if err != nil {
		return errs.Errorf(errs.Unavailable, "%w: listing witnessed audit logs: %v", ErrUnavailable, err)
	}
	cvs, err := m.opts.Store.List(ctx, cosignedPrefix)
	if err != nil {
		return errs.Errorf(errs.Unavailable, "%w: listing received cosignatures: %v", ErrUnavailable, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, kv := range kvs {
		var r witnessRecord
		var td spiffeid.TrustDomain
		err := json.Unmarshal(kv.Value, &r)
		if err == nil {
			td, err = spiffeid.TrustDomainFromString(r.TrustDomain)
		}
		if err != nil || witnessKey(td) != kv.Key {
			m.opts.Log.Error("skipping a stored witness record", "key", kv.Key, "err", err)
			continue
		}
		if old := m.witness[td]; old != nil && old.rev >= kv.Revision {
			continue
		}
		ws := &witnessState{rec: r, rev: kv.Revision}
		if r.PublicKeyPEM != "" {
			if ws.pub, err = checkpoint.ParsePublicKeyPEM([]byte(r.PublicKeyPEM)); err != nil {
				m.opts.Log.Error("stored witness record: pinned key unreadable", "key", kv.Key, "err", err)
				continue
			}
		}
		if old := m.witness[td]; old != nil {
			ws.lastAttempt, ws.lastError = old.lastAttempt, old.lastError
		}
		m.witness[td] = ws
	}
	for _, kv := range cvs {
		var r cosignedRecord
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			m.opts.Log.Error("skipping a stored cosignature", "key", kv.Key, "err", err)
			continue
		}
		td, err := spiffeid.TrustDomainFromString(r.TrustDomain)
		if err != nil || cosignedKey(td) != kv.Key {
			m.opts.Log.Error("skipping a stored cosignature", "key", kv.Key)
			continue
		}
		if old, ok := m.cosigned[td]; ok && old.Cosignature.Checkpoint.Size > r.Cosignature.Checkpoint.Size {
			continue
		}
		m.cosigned[td] = r
	}
	return nil
}

// Witnessed returns what this authority witnessed of td's audit log.
func (m *Manager) Witnessed(td spiffeid.TrustDomain) WitnessStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	var st WitnessStatus
	if ws := m.witness[td]; ws != nil {
		st = WitnessStatus{KeyID: ws.rec.KeyID, PinnedAt: ws.rec.PinnedAt, Checkpoint: ws.rec.Checkpoint,
			WitnessedAt: ws.rec.WitnessedAt, LastAttempt: ws.lastAttempt, LastError: ws.lastError, Alert: ws.rec.Alert}
	}
	if c, ok := m.cosigned[td]; ok {
		cs := c.Cosignature
		st.CosignedByPeer = &cs
	}
	if a := m.ownAlert[td]; a != nil {
		c := *a
		st.OwnLogAlert = &c
	}
	return st
}

// CosignatureOf returns the newest cosignature this authority made on
// td's log (nil if none): what the endpoint hands td's authority.
func (m *Manager) CosignatureOf(td spiffeid.TrustDomain) *checkpoint.Cosignature {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ws := m.witness[td]; ws != nil && ws.rec.Cosignature != nil {
		cs := *ws.rec.Cosignature
		return &cs
	}
	return nil
}

// Cosignatures returns the newest cosignature each federated peer made on
// this authority's log, by trust domain (for `ward audit verify`).
func (m *Manager) Cosignatures() []ReceivedCosignature {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ReceivedCosignature
	for td, c := range m.cosigned {
		ws := m.witness[td]
		if _, ok := m.entries[td]; !ok || ws == nil || ws.rec.PublicKeyPEM == "" {
			continue
		}
		out = append(out, ReceivedCosignature{TrustDomain: td, Cosignature: c.Cosignature,
			PublicKeyPEM: []byte(ws.rec.PublicKeyPEM), ReceivedAt: c.ReceivedAt})
	}
	sortCosignatures(out)
	return out
}

func sortCosignatures(cs []ReceivedCosignature) {
	for i := 1; i < len(cs); i++ {
		for j := i; j > 0 && cs[j].TrustDomain.Name() < cs[j-1].TrustDomain.Name(); j-- {
			cs[j], cs[j-1] = cs[j-1], cs[j]
		}
	}
}

// WitnessClient is how this authority witnesses its peers.
type WitnessClient struct {
	// SVID returns this authority's server X509-SVID. Required.
	SVID func() (*x509svid.SVID, error)
	// Interval between rounds (default 1m).
	Interval time.Duration
}

// RunWitness witnesses the audit log of every https_spiffe peer every
// c.Interval until ctx ends.
func (m *Manager) RunWitness(ctx context.Context, c WitnessClient) {
	if c.Interval <= 0 {
		c.Interval = time.Minute
	}
	m.mu.Lock()
	m.witnessSVID = c.SVID
	m.mu.Unlock()
	t := time.NewTicker(c.Interval)
	defer t.Stop()
	for {
		for _, st := range m.List() {
			if ctx.Err() != nil {
				return
			}
			if st.Profile == ProfileSPIFFE {
				_, _ = m.witnessRound(ctx, st.Relationship, c.SVID)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.witnessWake:
			// A new relationship: pin its key now.
		}
	}
}

// SetWitnessSVID names the SVID WitnessNow authenticates with on an
// authority that does not run the witness rounds itself (RunWitness runs
// on the elected leader only; docs/ha.md).
func (m *Manager) SetWitnessSVID(svid func() (*x509svid.SVID, error)) {
	m.mu.Lock()
	m.witnessSVID = svid
	m.mu.Unlock()
}

// WitnessNow witnesses td's audit log now, as the running witness
// (RunWitness) does.
func (m *Manager) WitnessNow(ctx context.Context, td spiffeid.TrustDomain) (WitnessStatus, error) {
	m.mu.Lock()
	svid := m.witnessSVID
	m.mu.Unlock()
	if svid == nil {
		return m.Witnessed(td), errs.Errorf(errs.Precondition, "federation: the audit witness is not running")
	}
	return m.Witness(ctx, td, svid)
}

// IsAlert reports whether err is a witness alert.
func IsAlert(err error) bool {
	var al *alertError
	return errors.As(err, &al)
}

// Witness witnesses td's audit log now (https_spiffe relationships only).
// An alert is returned as an error of kind errs.RolledBack.
func (m *Manager) Witness(ctx context.Context, td spiffeid.TrustDomain, svid func() (*x509svid.SVID, error)) (WitnessStatus, error) {
	e, ok := m.get(td)
	if !ok {
		return WitnessStatus{}, errs.Errorf(errs.NotFound, "%w %s", ErrNotFound, td)
	}
	if e.rel.Profile != ProfileSPIFFE {
		return m.Witnessed(td), errs.Errorf(errs.Precondition, "federation: %s uses %s; audit logs are witnessed over https_spiffe only (mTLS between the authorities)", td, e.rel.Profile)
	}
	return m.witnessRound(ctx, e.rel, svid)
}

// witnessRound fetches rel's checkpoint, checks it and cosigns it.
func (m *Manager) witnessRound(ctx context.Context, rel Relationship, svid func() (*x509svid.SVID, error)) (WitnessStatus, error) {
	td := rel.TrustDomain
	if m.opts.Signer == nil {
		return m.Witnessed(td), errs.Errorf(errs.Precondition, "federation: this authority has no audit signing key to cosign with")
	}
	m.witnessMu.Lock()
	defer m.witnessMu.Unlock()
	err := m.witnessOnce(ctx, rel, svid)
	m.mu.Lock()
	ws := m.witness[td]
	if ws == nil {
		ws = &witnessState{rec: witnessRecord{TrustDomain: td.Name()}}
		m.witness[td] = ws
	}
	prev := ws.lastError
	ws.lastAttempt = m.opts.Clock().UTC()
	ws.lastError = ""
	if err != nil {
		ws.lastError = err.Error()
	}
	m.mu.Unlock()
	if err != nil && ctx.Err() == nil && !IsAlert(err) {
		// Each new error once at warning level (an unreachable peer or
		// one of another SPIFFE implementation fails every round).
		lvl := slog.LevelWarn
		if err.Error() == prev {
			lvl = slog.LevelDebug
		}
		m.opts.Log.Log(ctx, lvl, "federation: witnessing the audit log failed", "trust_domain", td.Name(), "err", err)
	}
	m.countWitness(td, err)
	return m.Witnessed(td), err
}

// alertError is a witness alert (the error of a round that found one).
type alertError struct{ a WitnessAlert }

func (e *alertError) Error() string { return e.a.Error }

func (m *Manager) witnessOnce(ctx context.Context, rel Relationship, svid func() (*x509svid.SVID, error)) error {
	td := rel.TrustDomain
	m.mu.Lock()
	ws := m.witness[td]
	var from uint64
	var rec witnessRecord
	var rev int64
	var pinned crypto.PublicKey
	if ws != nil {
		rec, rev, pinned = ws.rec, ws.rev, ws.pub
		if rec.Checkpoint != nil {
			from = rec.Checkpoint.Size
		}
	}
	m.mu.Unlock()
	if rec.TrustDomain == "" {
		rec.TrustDomain = td.Name()
	}
	body, err := m.fetchCheckpoint(ctx, rel, svid, from)
	if err != nil {
		return err
	}
	ans, pub, err := parseWitnessAnswer(td, body)
	if err != nil {
		return m.refuseWitness(ctx, td, err)
	}
	head := ans.Checkpoint
	if pinned != nil {
		// The pinned key verifies; a head under another key is an alert
		// (after its own signature is checked: a forged head is not
		// evidence of anything).
		if head.KeyID != rec.KeyID {
			if err := checkpoint.Verify(head, pub); err != nil {
				return m.refuseWitness(ctx, td, err)
			}
			return m.alert(ctx, td, rec, rev, AlertKeyChanged, keyChanged(td, rec), rec.Checkpoint, head)
		}
		pub = pinned
	}
	if err := checkpoint.Verify(head, pub); err != nil {
		return m.refuseWitness(ctx, td, err)
	}
	var proof [][]byte
	if rec.Checkpoint != nil {
		if ans.From != rec.Checkpoint.Size && head.Size > rec.Checkpoint.Size {
			return m.refuseWitness(ctx, td, fmt.Errorf("asked for a consistency proof from size %d, got one from %d", rec.Checkpoint.Size, ans.From))
		}
		proof = ans.Consistency
	}
	mem := &witnessMemory{ctx: ctx, m: m, td: td, rec: rec, rev: rev}
	w := checkpoint.NewWitness(mem)
	if err := w.Advance(head, pub, proof); err != nil {
		var rb *checkpoint.RollbackError
		var kc *checkpoint.KeyChangedError
		switch {
		case errors.As(err, &rb):
			reason := map[string]string{"went backwards": AlertWentBackwards, "forked": AlertForked,
				"inconsistent": AlertInconsistent, "other log": AlertOtherLog}[rb.Reason()]
			return m.alert(ctx, td, mem.rec, mem.rev, reason, rollbackCause(rb), rec.Checkpoint, head)
		case errors.As(err, &kc):
			return m.alert(ctx, td, mem.rec, mem.rev, AlertKeyChanged, keyChanged(td, rec), rec.Checkpoint, head)
		}
		return err
	}
	rec, rev = mem.rec, mem.rev
	// A first checkpoint pinned the peer's key: record it in the audit log.
	if mem.pinned {
		fields := map[string]string{"trust_domain": td.Name(), "pinned_key": head.KeyID, "size": strconv.FormatUint(head.Size, 10),
			"root": hex.EncodeToString(head.RootHash)}
		if err := m.opts.Audit.Record(ctx, m.event(ctx, "federation.witness", audit.ResultOK, fields)); err != nil {
			m.opts.Log.Error("could not audit the pinned checkpoint key of a federated peer", "trust_domain", td.Name(), "err", err)
		}
		m.opts.Log.Info("federation: pinned the audit checkpoint key of a federated peer", "trust_domain", td.Name(), "key_id", head.KeyID)
	}
	if rec.Cosignature == nil || rec.Cosignature.Checkpoint.Size != head.Size || !bytes.Equal(rec.Cosignature.Checkpoint.RootHash, head.RootHash) {
		cs, err := checkpoint.Cosign(m.opts.Signer, m.opts.TrustDomain.Name(), head, m.opts.Clock())
		if err != nil {
			return err
		}
		rec.Cosignature, rec.WitnessedAt = &cs, cs.Time
		if rev, err = m.putWitness(ctx, td, rec, rev, pub); err != nil {
			return err
		}
	}
	if ans.Cosignature != nil {
		if err := m.acceptCosignature(ctx, td, *ans.Cosignature, pub); err != nil {
			m.opts.Log.Warn("federation: refused a cosignature of this authority's audit log", "trust_domain", td.Name(), "err", err)
			return err
		}
	}
	if err := m.checkOwnLog(ctx, td); err != nil {
		return err
	}
	if rec.Alert != nil {
		// A later good answer never clears an alert.
		return &alertError{*rec.Alert}
	}
	return nil
}

// rollbackCause says how a peer's head fails to extend the witnessed
// checkpoint.
func rollbackCause(rb *checkpoint.RollbackError) error {
	r, h := rb.Remembered, rb.Head
	var what string
	switch rb.Reason() {
	case "other log":
		what = fmt.Sprintf("was REPLACED by log %q", h.Origin)
	case "inconsistent":
		what = fmt.Sprintf("REWROTE ITS HISTORY (its larger checkpoint does not extend the witnessed one: %s)", strings.Join(strings.Fields(fmt.Sprint(rb.Inconsistent)), " "))
	case "forked":
		what = "FORKED"
	default:
		what = "went BACKWARDS"
	}
	return fmt.Errorf("audit log %q %s: it now has %d events with root %x (signed %s), but this authority witnessed and cosigned %d events with root %x (signed %s); "+
		"its stored log was truncated, rolled back or replaced: treat it as an incident and compare with its other witnesses and its backups",
		r.Origin, what, h.Size, h.RootHash, h.Time.UTC().Format(time.RFC3339), r.Size, r.RootHash, r.Time.UTC().Format(time.RFC3339))
}

// keyChanged says that a peer's checkpoint came under another key than
// the pinned one.
func keyChanged(td spiffeid.TrustDomain, rec witnessRecord) error {
	return fmt.Errorf("the audit checkpoints of %s are now signed by another key than %s, pinned on %s: an authority's audit signing key never changes, "+
		"so its audit log was wiped or replaced in storage (a new log forgets every earlier event), or another authority speaks for %s",
		td.Name(), rec.KeyID, rec.PinnedAt.Format(time.RFC3339), td.Name())
}

// checkOwnLog checks this authority's own audit log (Options.OwnLog)
// against the newest checkpoint td's authority cosigned of it: a log that
// went back behind what a witness cosigned was rolled back in storage
// (while this authority was stopped, or it would have noticed). The alert
// is kept in memory and found again from the stored cosignature after a
// restart; it clears only if the log extends the cosigned checkpoint.
func (m *Manager) checkOwnLog(ctx context.Context, td spiffeid.TrustDomain) error {
	if m.opts.OwnLog == nil {
		return nil
	}
	m.mu.Lock()
	c, ok := m.cosigned[td]
	m.mu.Unlock()
	if !ok {
		return nil
	}
	cs := c.Cosignature.Checkpoint
	head, _, err := m.opts.OwnLog.LatestCheckpoint(ctx, cs.Size)
	if err != nil {
		return fmt.Errorf("reading this authority's audit head to compare with %s's cosignature: %w", td.Name(), err)
	}
	var reason string
	var cause error
	switch {
	case head.Size < cs.Size:
		reason = AlertWentBackwards
	case head.Size == cs.Size && !bytes.Equal(head.RootHash, cs.RootHash):
		reason = AlertForked
	case head.Size > cs.Size:
		pf, err := m.opts.OwnLog.ConsistencyProof(ctx, cs.Size, head.Size)
		if err != nil {
			return fmt.Errorf("proving this authority's audit log extends what %s cosigned: %w", td.Name(), err)
		}
		if cause = proof.VerifyConsistency(rfc6962.DefaultHasher, cs.Size, head.Size, pf, cs.RootHash, head.RootHash); cause != nil {
			reason = AlertInconsistent
		}
	}
	m.mu.Lock()
	old := m.ownAlert[td]
	if reason == "" {
		delete(m.ownAlert, td)
		m.mu.Unlock()
		return nil
	}
	a := old
	if a == nil {
		msg := fmt.Sprintf("AUDIT LOG ROLLBACK of this authority's own log, seen by its witness %s (%s): the log now has %d events with root %x, but %s cosigned %d events with root %x at %s, signed by this authority; "+
			"its stored audit log was truncated, rolled back or replaced while it was stopped. Treat it as an incident: restore storage from a backup taken after that checkpoint and find out who could write to it",
			td.Name(), reason, head.Size, head.RootHash, td.Name(), cs.Size, cs.RootHash, c.Cosignature.Time.UTC().Format(time.RFC3339))
		if cause != nil {
			msg += " (" + strings.Join(strings.Fields(cause.Error()), " ") + ")"
		}
		a = &WitnessAlert{Reason: reason, Error: msg, At: m.opts.Clock().UTC(), Remembered: &cs, Head: head}
		m.ownAlert[td] = a
	}
	a.Count++
	alert := *a
	m.mu.Unlock()
	if old == nil {
		fields := map[string]string{"trust_domain": td.Name(), "own_log": "true", "reason": reason,
			"head_size": strconv.FormatUint(head.Size, 10), "head_root": hex.EncodeToString(head.RootHash),
			"witnessed_size": strconv.FormatUint(cs.Size, 10), "witnessed_root": hex.EncodeToString(cs.RootHash)}
		ev := m.event(ctx, "federation.witness", audit.ResultError, fields)
		ev.Error = alert.Error
		if err := m.opts.Audit.Record(ctx, ev); err != nil {
			m.opts.Log.Error("could not audit a rollback of this authority's audit log", "err", err)
		}
	}
	m.opts.Log.Error("federation: AUDIT LOG ROLLBACK: this authority's own audit log does not extend what a federated witness cosigned",
		"witness", td.Name(), "reason", reason, "first", old == nil)
	return &alertError{alert}
}

// OwnLogAlert returns the alert raised because this authority's own audit
// log does not extend what td's authority cosigned (nil if none).
func (m *Manager) OwnLogAlert(td spiffeid.TrustDomain) *WitnessAlert {
	m.mu.Lock()
	defer m.mu.Unlock()
	if a := m.ownAlert[td]; a != nil {
		c := *a
		return &c
	}
	return nil
}

// parseWitnessAnswer decodes an untrusted answer and its key; the
// checkpoint must be of td's log.
func parseWitnessAnswer(td spiffeid.TrustDomain, body []byte) (WitnessAnswer, crypto.PublicKey, error) {
	var ans WitnessAnswer
	if len(body) > MaxWitnessAnswer {
		return ans, nil, fmt.Errorf("answer of %d bytes or more, the limit is %d", len(body), MaxWitnessAnswer)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ans); err != nil {
		return ans, nil, fmt.Errorf("answer does not parse: %v", err)
	}
	if err := ans.Checkpoint.Check(); err != nil {
		return ans, nil, err
	}
	ans.Checkpoint.Time = ans.Checkpoint.Time.UTC()
	if want := Origin(td); ans.Checkpoint.Origin != want {
		return ans, nil, fmt.Errorf("the checkpoint is of log %q, not of %s's audit log %q", ans.Checkpoint.Origin, td.Name(), want)
	}
	if len(ans.Consistency) > maxProofHashes {
		return ans, nil, fmt.Errorf("consistency proof of %d hashes, at most %d", len(ans.Consistency), maxProofHashes)
	}
	pub, err := checkpoint.ParsePublicKeyPEM([]byte(ans.PublicKeyPEM))
	if err != nil {
		return ans, nil, err
	}
	return ans, pub, nil
}

// refuseWitness audits and returns an answer that was not accepted (not
// an alert: an unsigned or malformed answer is evidence of nothing).
func (m *Manager) refuseWitness(ctx context.Context, td spiffeid.TrustDomain, cause error) error {
	err := errs.Errorf(errs.Denied, "federation: the audit checkpoint of %s was refused: %v", td.Name(), cause)
	m.mu.Lock()
	prev := ""
	if ws := m.witness[td]; ws != nil {
		prev = ws.lastError
	}
	m.mu.Unlock()
	if prev != err.Error() { // each new reason once, not every retry
		ev := m.event(ctx, "federation.witness", audit.ResultDenied, map[string]string{"trust_domain": td.Name()})
		ev.Error = err.Error()
		if aerr := m.opts.Audit.Record(ctx, ev); aerr != nil {
			m.opts.Log.Error("could not audit a refused checkpoint", "trust_domain", td.Name(), "err", aerr)
		}
	}
	return err
}

// alert records that td's log did not extend what was witnessed: the
// first time it is stored (with both signed checkpoints as evidence) and
// audited; it never clears on its own.
func (m *Manager) alert(ctx context.Context, td spiffeid.TrustDomain, rec witnessRecord, rev int64, reason string, cause error, remembered *checkpoint.Checkpoint, head checkpoint.Checkpoint) error {
	msg := fmt.Sprintf("AUDIT WITNESS ALERT for %s (%s): %v; this alert stays until the relationship is removed (ward federation remove %s, then add it again, only once the incident is understood)",
		td.Name(), reason, cause, td.Name())
	first := rec.Alert == nil
	if first {
		rec.Alert = &WitnessAlert{Reason: reason, Error: msg, At: m.opts.Clock().UTC(), Remembered: remembered, Head: head}
	}
	rec.Alert.Count++
	fields := map[string]string{"trust_domain": td.Name(), "reason": reason, "head_size": strconv.FormatUint(head.Size, 10),
		"head_root": hex.EncodeToString(head.RootHash), "head_key": head.KeyID}
	if remembered != nil {
		fields["witnessed_size"] = strconv.FormatUint(remembered.Size, 10)
		fields["witnessed_root"] = hex.EncodeToString(remembered.RootHash)
	}
	if first {
		ev := m.event(ctx, "federation.witness", audit.ResultError, fields)
		ev.Error = msg
		if err := m.opts.Audit.Record(ctx, ev); err != nil {
			m.opts.Log.Error("could not audit a witness alert", "trust_domain", td.Name(), "err", err)
		}
	}
	if _, err := m.putWitness(ctx, td, rec, rev, nil); err != nil {
		m.opts.Log.Error("could not store a witness alert", "trust_domain", td.Name(), "err", err)
		// Still raise it in memory.
		m.mu.Lock()
		if ws := m.witness[td]; ws != nil {
			ws.rec.Alert = rec.Alert
		}
		m.mu.Unlock()
	}
	m.opts.Log.Error("federation: AUDIT WITNESS ALERT: a federated authority's audit log did not extend what this authority witnessed",
		"trust_domain", td.Name(), "reason", reason, "first", first, "err", cause)
	return &alertError{*rec.Alert}
}

// putWitness stores rec (compare-and-swap on rev) and installs it; pub is
// the pinned key (nil: unchanged).
func (m *Manager) putWitness(ctx context.Context, td spiffeid.TrustDomain, rec witnessRecord, rev int64, pub crypto.PublicKey) (int64, error) {
	v, err := json.Marshal(rec)
	if err != nil {
		return rev, err
	}
	nrev, err := m.opts.Store.CompareAndSwap(ctx, witnessKey(td), v, rev)
	if err != nil {
		if errors.Is(err, store.ErrConflict) {
			// Another authority sharing the store witnessed meanwhile:
			// take its record; the next round goes on from it.
			_ = m.loadWitness(ctx)
		}
		return rev, errs.Errorf(errs.Unavailable, "%w: storing what was witnessed of %s: %v", ErrUnavailable, td.Name(), err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	ws := m.witness[td]
	if ws == nil {
		ws = &witnessState{}
		m.witness[td] = ws
	}
	ws.rec, ws.rev = rec, nrev
	if pub != nil {
		ws.pub = pub
	}
	return nrev, nil
}

// acceptCosignature checks a cosignature td's authority made on this
// authority's log (with td's pinned key pub, and this log's own key) and
// stores it if it is newer than the one held.
func (m *Manager) acceptCosignature(ctx context.Context, td spiffeid.TrustDomain, cs checkpoint.Cosignature, pub crypto.PublicKey) error {
	if cs.Witness != td.Name() {
		return fmt.Errorf("the cosignature names witness %q, not %s", cs.Witness, td.Name())
	}
	if err := checkpoint.VerifyCosignature(cs, pub); err != nil {
		return err
	}
	own := Origin(m.opts.TrustDomain)
	if cs.Checkpoint.Origin != own {
		return fmt.Errorf("the cosignature is on log %q, not on this authority's %q", cs.Checkpoint.Origin, own)
	}
	if err := checkpoint.Verify(cs.Checkpoint, m.opts.Signer.Public()); err != nil {
		return fmt.Errorf("the cosigned checkpoint was not signed by this authority: %w", err)
	}
	m.mu.Lock()
	old, ok := m.cosigned[td]
	m.mu.Unlock()
	if ok && (old.Cosignature.Checkpoint.Size > cs.Checkpoint.Size ||
		(old.Cosignature.Checkpoint.Size == cs.Checkpoint.Size && !old.Cosignature.Time.Before(cs.Time))) {
		return nil
	}
	r := cosignedRecord{TrustDomain: td.Name(), Cosignature: cs, ReceivedAt: m.opts.Clock().UTC()}
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if _, err := m.opts.Store.Put(ctx, cosignedKey(td), v); err != nil {
		return errs.Errorf(errs.Unavailable, "%w: storing the cosignature of %s: %v", ErrUnavailable, td.Name(), err)
	}
	m.mu.Lock()
	m.cosigned[td] = r
	m.mu.Unlock()
	return nil
}

// fetchCheckpoint asks rel's endpoint for its checkpoint and a proof from
// size from, presenting this authority's server SVID and requiring the
// endpoint's SPIFFE ID, verified with the peer's own bundle only.
func (m *Manager) fetchCheckpoint(ctx context.Context, rel Relationship, svid func() (*x509svid.SVID, error), from uint64) ([]byte, error) {
	e, ok := m.get(rel.TrustDomain)
	if !ok || e.bundle == nil {
		return nil, fmt.Errorf("no bundle of %s yet", rel.TrustDomain)
	}
	u, err := url.Parse(rel.EndpointURL)
	if err != nil {
		return nil, err
	}
	u.Path, u.RawQuery = WitnessPath, url.Values{"from": {strconv.FormatUint(from, 10)}}.Encode()
	tc := tlsconfig.MTLSClientConfig(svidFunc(svid), e.bundle, tlsconfig.AuthorizeID(rel.EndpointID))
	client := &http.Client{
		Transport: &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true, TLSHandshakeTimeout: m.opts.FetchTimeout},
		Timeout:   m.opts.FetchTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("the witness does not follow redirects")
		},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), http.NoBody)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("audit checkpoint of %s: %w", rel.TrustDomain, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxWitnessAnswer+1))
	if err != nil {
		return nil, fmt.Errorf("reading the audit checkpoint of %s: %w", rel.TrustDomain, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the bundle endpoint of %s answered %s for its audit checkpoint: %.200q", rel.TrustDomain, resp.Status, bytes.TrimSpace(body))
	}
	if resp.Header.Get(witnessHeader) != "1" {
		return nil, fmt.Errorf("the bundle endpoint of %s serves no audit checkpoint (not a ward authority?); its audit log cannot be witnessed", rel.TrustDomain)
	}
	return body, nil
}

// witnessMemory is the checkpoint.Memory of one peer's log: the record
// under witnessPrefix+td, behind the barrier. Put stores it with
// compare-and-swap, so two authorities sharing a store cannot move it
// backwards.
type witnessMemory struct {
	ctx    context.Context
	m      *Manager
	td     spiffeid.TrustDomain
	rec    witnessRecord
	rev    int64
	pinned bool // Put pinned the key (the first checkpoint)
}

func (w *witnessMemory) where() string { return witnessKey(w.td) + " (behind the barrier)" }

// Lock implements checkpoint.Memory (the Manager serializes rounds).
func (w *witnessMemory) Lock() (func(), error) { return func() {}, nil }

// PinnedKey implements checkpoint.Memory.
func (w *witnessMemory) PinnedKey(string) (string, string, error) {
	return w.rec.KeyID, w.where(), nil
}

// PinKey implements checkpoint.Memory; the witness never accepts a new key
// on its own (removing the relationship starts over).
func (w *witnessMemory) PinKey(checkpoint.Checkpoint) error {
	return errors.New("federation: a peer's checkpoint key is only pinned on first use")
}

// Newest implements checkpoint.Memory.
func (w *witnessMemory) Newest(_, keyID string) (*checkpoint.Checkpoint, string, error) {
	if w.rec.Checkpoint == nil || w.rec.KeyID != keyID {
		return nil, w.where(), nil
	}
	cp := *w.rec.Checkpoint
	return &cp, w.where(), nil
}

// Put implements checkpoint.Memory.
func (w *witnessMemory) Put(cp checkpoint.Checkpoint, pub crypto.PublicKey) error {
	rec := w.rec
	if rec.KeyID == "" {
		pemKey, err := checkpoint.MarshalPublicKeyPEM(pub)
		if err != nil {
			return err
		}
		rec.Origin, rec.KeyID, rec.PublicKeyPEM, rec.PinnedAt = cp.Origin, cp.KeyID, string(pemKey), w.m.opts.Clock().UTC()
		w.pinned = true
	}
	rec.Checkpoint = &cp
	rev, err := w.m.putWitness(w.ctx, w.td, rec, w.rev, pub)
	if err != nil {
		return err
	}
	w.rec, w.rev = rec, rev
	return nil
}

// countWitness counts a round's outcome.
func (m *Manager) countWitness(td spiffeid.TrustDomain, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.stats[td]
	if c == nil {
		c = &counters{}
		m.stats[td] = c
	}
	var al *alertError
	switch {
	case err == nil:
		c.witnessOK++
	case errors.As(err, &al):
		c.witnessAlert++
	case errs.KindOf(err) == errs.Denied:
		c.witnessRefused++
	default:
		c.witnessFailed++
	}
}
