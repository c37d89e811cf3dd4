package agent

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
)

// TestSameBundleInOtherBytesChangesNothing: the authority's bundle JSON is
// not canonical (its bytes can differ from sync to sync for one bundle); the
// agent compares content, so it neither reinstalls the bundle nor wakes the
// Workload API streams. A real change still lands.
func TestSameBundleInOtherBytesChangesNothing(t *testing.T) {
	auth := newTestAuthority(t, testTD, time.Hour, time.Hour)
	a := bareAgent(t)
	a.td = testTD
	bd, _ := auth.ca.Bundle()
	doc, err := bd.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	seq, _ := bd.SequenceNumber()
	if err := a.applySync(&wardv1.SyncResponse{BundleSpiffeJson: doc, BundleSequence: seq}); err != nil {
		t.Fatal(err)
	}
	first, notify := a.bundle, a.changed
	var other bytes.Buffer // same JSON document, other bytes
	if err := json.Indent(&other, doc, "", "  "); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(other.Bytes(), doc) {
		t.Fatal("test needs different bytes")
	}
	if err := a.applySync(&wardv1.SyncResponse{BundleSpiffeJson: other.Bytes(), BundleSequence: seq}); err != nil {
		t.Fatal(err)
	}
	if a.bundle != first {
		t.Fatal("the same bundle in other bytes was installed again")
	}
	select {
	case <-notify:
		t.Fatal("Workload API streams were notified although the bundle did not change")
	default:
	}

	if err := auth.ca.RotateRoot(t.Context()); err != nil {
		t.Fatal(err)
	}
	bd2, _ := auth.ca.Bundle()
	doc2, _ := bd2.Marshal()
	seq2, _ := bd2.SequenceNumber()
	if err := a.applySync(&wardv1.SyncResponse{BundleSpiffeJson: doc2, BundleSequence: seq2}); err != nil {
		t.Fatal(err)
	}
	if a.bundle == first || !a.bundle.Equal(bd2) {
		t.Fatal("a changed bundle was not installed")
	}
}
