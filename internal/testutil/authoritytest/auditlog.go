package authoritytest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/shared/checkpoint"
)

// AuditLog is a real signed audit log on its own memstore with the
// authority's prover: the checkpoints and consistency proofs the Node API's
// Sync hands agents (it implements nodeapi.AuditSource).
type AuditLog struct {
	Log    *audit.Log
	prover *audit.Prover
}

// NewAuditLog opens an empty log of origin signed by key, closed when the
// test ends.
func NewAuditLog(t testing.TB, key *ecdsa.PrivateKey, origin string) *AuditLog {
	t.Helper()
	// Interval 0: every commit signs, so Latest serves the full head and a
	// test sees every event it appended (the lag is audit's own test).
	l, err := audit.Open(context.Background(), memstore.New(memstore.WithMaxBatch(128)), key, origin, audit.WithCheckpointInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return &AuditLog{Log: l, prover: audit.NewProver(l)}
}

// Append adds events number from..from+n-1: the same event for the same
// number, so two logs given the same numbers agree on that prefix (and a
// log given other numbers is a fork).
func (l *AuditLog) Append(t testing.TB, from, n int) *AuditLog {
	t.Helper()
	for i := from; i < from+n; i++ {
		ev := audit.Event{Time: time.Unix(1700000000, 0).UTC(), RequestID: fmt.Sprint("r", i), Actor: "spiffe://test.example.org/x",
			Operation: "kms.encrypt", Result: audit.ResultOK}
		if _, err := l.Log.Append(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// LatestCheckpoint is the log's newest signed head (audit.Log.Latest) and
// its public key.
func (l *AuditLog) LatestCheckpoint(ctx context.Context, atLeast uint64) (checkpoint.Checkpoint, crypto.PublicKey, error) {
	cp, err := l.Log.Latest(ctx, atLeast)
	return cp, l.Log.PublicKey(), err
}

// ConsistencyProof proves the tree of size o is a prefix of the tree of size n.
func (l *AuditLog) ConsistencyProof(ctx context.Context, o, n uint64) ([][]byte, error) {
	return l.prover.ConsistencyProof(ctx, o, n)
}

// AuditSource is the audit source to give a Node API under test (it
// implements nodeapi.AuditSource): it serves the log last Set (a test swaps
// in an older copy to play a rolled-back authority), fails while Broken,
// and counts the checkpoints asked for (Sync asks once per call that
// reaches the service).
type AuditSource struct {
	// Broken makes ConsistencyProof fail (an unreadable store).
	Broken atomic.Bool
	cur    atomic.Pointer[AuditLog]
	asked  atomic.Int64
}

// ErrNoAuditLog is what LatestCheckpoint returns before Set.
var ErrNoAuditLog = errors.New("authoritytest: no audit log set")

// Set makes l the log served.
func (s *AuditSource) Set(l *AuditLog) { s.cur.Store(l) }

// Asked is how many checkpoints were asked for.
func (s *AuditSource) Asked() int { return int(s.asked.Load()) }

// LatestCheckpoint implements nodeapi.AuditSource.
func (s *AuditSource) LatestCheckpoint(ctx context.Context, atLeast uint64) (checkpoint.Checkpoint, crypto.PublicKey, error) {
	s.asked.Add(1)
	l := s.cur.Load()
	if l == nil {
		return checkpoint.Checkpoint{}, nil, ErrNoAuditLog
	}
	return l.LatestCheckpoint(ctx, atLeast)
}

// ConsistencyProof implements nodeapi.AuditSource.
func (s *AuditSource) ConsistencyProof(ctx context.Context, o, n uint64) ([][]byte, error) {
	l := s.cur.Load()
	switch {
	case s.Broken.Load():
		return nil, errors.New("authoritytest: audit store unreadable")
	case l == nil:
		return nil, ErrNoAuditLog
	}
	return l.ConsistencyProof(ctx, o, n)
}

// ReadEvents returns every event in l, failing the test on a damaged record.
func ReadEvents(t testing.TB, l *audit.Log) []audit.Event {
	t.Helper()
	ctx := context.Background()
	cp, err := l.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []audit.Event
	if err := l.Read(ctx, 0, cp.Size, func(r audit.Record) error {
		if r.Err != nil {
			return r.Err
		}
		ev, err := audit.DecodeEvent(r.Leaf)
		out = append(out, ev)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return out
}
