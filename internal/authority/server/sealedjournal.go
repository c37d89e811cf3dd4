package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store"
)

// Events that happen while sealed (init, rejected shares, failed unseals)
// cannot reach the audit log, which lives behind the barrier. They are
// written to a journal in the raw store, so a crash before the next unseal
// does not lose them, and appended to the log first thing at the next
// unseal, then deleted. The journal is not encrypted (there is no key
// while sealed) and holds only what an audit event holds: actor, request
// id, operation, result, error message; never a share. It is bounded:
// beyond maxSealedJournal entries further events are kept in memory only.
// Journaled events carry the field "journal" = "sealed".
const (
	sealedJournalPrefix = "core/sealed-events/"
	maxSealedJournal    = 10000
)

// journalSealed writes ev to the sealed-events journal.
func (s *Server) journalSealed(ev audit.Event) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.journalMu.Lock()
	defer s.journalMu.Unlock()
	if s.journalCount < 0 {
		kvs, err := s.raw.List(ctx, sealedJournalPrefix)
		if err != nil {
			return err
		}
		s.journalCount = len(kvs)
	}
	if s.journalCount >= maxSealedJournal {
		return fmt.Errorf("the sealed-events journal holds %d events", s.journalCount)
	}
	if ev.Fields == nil {
		ev.Fields = map[string]string{}
	}
	ev.Fields["journal"] = "sealed"
	data, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	var r [6]byte
	rand.Read(r[:])
	key := sealedJournalPrefix + fmt.Sprintf("%020d-", time.Now().UnixNano()) + hex.EncodeToString(r[:])
	if _, err := s.raw.CompareAndSwap(ctx, key, data, 0); err != nil {
		return err
	}
	s.journalCount++
	return nil
}

// pendingEvent is one event to append at unseal: from memory, or from the
// journal (key set).
type pendingEvent struct {
	ev  audit.Event
	key string
}

// sealedEvents returns the journal's events and the in-memory ones, oldest
// first. Undecodable journal entries become an event saying so.
func (s *Server) sealedEvents(ctx context.Context, mem []audit.Event) []pendingEvent {
	var out []pendingEvent
	kvs, err := s.raw.List(ctx, sealedJournalPrefix)
	if err != nil {
		s.log.Error("reading the sealed-events journal; its events are appended at a later unseal", "err", err)
	}
	for _, kv := range kvs {
		var ev audit.Event
		if err := json.Unmarshal(kv.Value, &ev); err != nil || ev.Operation == "" {
			ev = audit.Event{Time: time.Now().UTC(), Actor: "system:unseal", Operation: "audit.sealed_journal_unreadable", Result: audit.ResultError,
				Error: fmt.Sprintf("the sealed-events journal entry %s does not decode: it was altered in storage", kv.Key)}
		}
		ev.Seq = 0
		out = append(out, pendingEvent{ev: ev, key: kv.Key})
	}
	for _, ev := range mem {
		out = append(out, pendingEvent{ev: ev})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].ev.Time.Before(out[j].ev.Time) })
	return out
}

// dropJournal deletes journal entries already appended to the log.
func (s *Server) dropJournal(ctx context.Context, keys []string) {
	if len(keys) == 0 {
		return
	}
	max := s.raw.MaxBatch()
	for len(keys) > 0 {
		n := min(len(keys), max)
		ops := make([]store.Op, n)
		for i, k := range keys[:n] {
			ops[i] = store.Op{Key: k, Delete: true, ExpectRevision: -1}
		}
		if _, err := s.raw.Batch(ctx, ops); err != nil {
			s.log.Error("deleting appended sealed-events journal entries; they will be appended again at the next unseal", "err", err, "entries", len(keys))
			break
		}
		keys = keys[n:]
	}
	s.journalMu.Lock()
	s.journalCount = -1
	s.journalMu.Unlock()
}
