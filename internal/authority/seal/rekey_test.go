package seal

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/barrier"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/memstore"
)

func rekeyInit(t *testing.T, raw store.Store, shares, threshold int) (*Manager, *barrier.Barrier, []string) {
	t.Helper()
	b := barrier.New(raw)
	m := NewManager(raw, b, NewShamir())
	res, err := m.Init(context.Background(), InitOptions{Shares: shares, Threshold: threshold})
	if err != nil {
		t.Fatal(err)
	}
	return m, b, res.Encoded()
}

func snapshot(t *testing.T, raw store.Store) map[string]int64 {
	t.Helper()
	kvs, err := raw.List(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, kv := range kvs {
		out[kv.Key] = kv.Revision
	}
	return out
}

func same(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestRekeyAttacksChangeNothing: shares of another authority, too few
// shares, a wrong nonce, a repeated share: refused, and storage is
// unchanged. A quorum of the right shares replaces them: the old ones stop
// working, the new ones unseal, data is untouched.
func TestRekeyAttacksChangeNothing(t *testing.T) {
	ctx := context.Background()
	raw := memstore.New()
	m, b, old := rekeyInit(t, raw, 5, 3)
	_, _, foreign := rekeyInit(t, memstore.New(), 5, 3)
	for _, s := range old[:3] {
		if _, err := m.SubmitShare(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Store().Put(ctx, "data/x", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	start := snapshot(t, raw)

	if _, _, err := m.RekeySubmit(ctx, "nonce", old[0]); !errors.Is(err, ErrNoRekey) {
		t.Fatalf("share without a rekey: %v", err)
	}
	if _, err := m.RekeyStart(ctx, InitOptions{Shares: 1, Threshold: 2}); !errors.Is(err, ErrBadOptions) {
		t.Fatalf("bad options: %v", err)
	}
	rs, err := m.RekeyStart(ctx, InitOptions{Shares: 3, Threshold: 2})
	if err != nil || !rs.Started || rs.OldThreshold != 3 || len(rs.Nonce) != 32 {
		t.Fatalf("start: %+v %v", rs, err)
	}
	if _, err := m.RekeyStart(ctx, InitOptions{Shares: 3, Threshold: 2}); !errors.Is(err, ErrRekeyRunning) {
		t.Fatalf("second start: %v", err)
	}
	// Another authority's shares: every one refused.
	for _, s := range foreign {
		if _, _, err := m.RekeySubmit(ctx, rs.Nonce, s); !errors.Is(err, ErrUnknownShare) {
			t.Fatalf("foreign share: %v", err)
		}
	}
	wrong := "00" + rs.Nonce[2:]
	if wrong == rs.Nonce { // its first byte was 00 already (1 in 256)
		wrong = "ff" + rs.Nonce[2:]
	}
	if _, _, err := m.RekeySubmit(ctx, wrong, old[0]); !errors.Is(err, ErrRekeyNonce) {
		t.Fatalf("wrong nonce: %v", err)
	}
	// Too few shares, then a repeat, then cancel.
	for _, s := range old[:2] {
		if st, shares, err := m.RekeySubmit(ctx, rs.Nonce, s); err != nil || shares != nil || st.Progress == 0 {
			t.Fatalf("share: %+v %v", st, err)
		}
	}
	if _, _, err := m.RekeySubmit(ctx, rs.Nonce, old[1]); !errors.Is(err, ErrRepeatedShare) {
		t.Fatalf("repeated share: %v", err)
	}
	if !m.RekeyCancel() {
		t.Fatal("cancel found no rekey")
	}
	if _, _, err := m.RekeySubmit(ctx, rs.Nonce, old[2]); !errors.Is(err, ErrNoRekey) {
		t.Fatalf("share after cancel: %v", err)
	}
	if !same(start, snapshot(t, raw)) {
		t.Fatal("refused rekey attempts changed storage")
	}

	// A real rekey.
	rs, err = m.RekeyStart(ctx, InitOptions{Shares: 3, Threshold: 2})
	if err != nil {
		t.Fatal(err)
	}
	var fresh [][]byte
	for _, s := range old[2:5] {
		_, fresh, err = m.RekeySubmit(ctx, rs.Nonce, s)
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(fresh) != 3 {
		t.Fatalf("got %d new shares", len(fresh))
	}
	after := snapshot(t, raw)
	if after["data/x"] != start["data/x"] {
		t.Fatal("rekey rewrote data")
	}
	// The running barrier keeps working; rotation uses the new root key.
	if _, err := b.Rotate(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := m.Seal(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.SubmitShare(ctx, old[0]); !errors.Is(err, ErrUnknownShare) {
		t.Fatalf("old share after rekey: %v", err)
	}
	// Old shares recombined outside ward do not open the keyring either.
	oldRoot, err := NewShamir().Combine(Config{Threshold: 3}, decodeAll(t, old[:3]))
	if err != nil {
		t.Fatal(err)
	}
	if err := barrier.New(raw).Unseal(ctx, oldRoot); !errors.Is(err, barrier.ErrBadRootKey) {
		t.Fatalf("old root key after rekey: %v", err)
	}
	for _, s := range fresh[:2] {
		if _, err := m.SubmitShare(ctx, EncodeShare(s)); err != nil {
			t.Fatal(err)
		}
	}
	if kv, err := b.Store().Get(ctx, "data/x"); err != nil || string(kv.Value) != "kept" {
		t.Fatalf("data after rekey: %q %v", kv.Value, err)
	}
}

func decodeAll(t *testing.T, enc []string) [][]byte {
	var out [][]byte
	for _, e := range enc {
		s, err := DecodeShare(e)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}
