package audit

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/shared/checkpoint"
)

func TestVerifierDetectsTampering(t *testing.T) {
	const n = 40
	type setup struct {
		st  *memstore.Store
		l   *Log
		key *ecdsa.PrivateKey
	}
	for _, tc := range []struct {
		name   string
		tamper func(s setup)
		// records adjusts the streamed records (nil: stream [0, n)).
		records  func(recs []Record) []Record
		wrongKey bool
		want     []string // sorted "kind@seq"
	}{
		{
			name: "intact",
		},
		{
			name:   "record bytes edited (barrier rejects it)",
			tamper: func(s setup) { s.st.SetCorrupt(s.l.eventKey(7)) },
			want:   []string{"unreadable@7", "unverified@-1"},
		},
		{
			name: "event content changed and re-encoded",
			tamper: func(s setup) {
				k := s.l.eventKey(12)
				e, err := DecodeEvent(s.st.Raw(k))
				if err != nil {
					panic(err)
				}
				e.Result = ResultDenied
				leaf, _ := EncodeEvent(e)
				s.st.RawPut(k, leaf)
			},
			want: []string{"root@-1"},
		},
		{
			name:   "record deleted",
			tamper: func(s setup) { s.st.RawDelete(s.l.eventKey(20)) },
			want:   []string{"missing@20", "unverified@-1"},
		},
		{
			name: "two records swapped",
			tamper: func(s setup) {
				a, b := s.l.eventKey(3), s.l.eventKey(30)
				va, vb := s.st.Raw(a), s.st.Raw(b)
				s.st.RawPut(a, vb)
				s.st.RawPut(b, va)
			},
			want: []string{"reordered@3", "reordered@30", "root@-1"},
		},
		{
			name: "tail truncated in storage",
			tamper: func(s setup) {
				for i := uint64(37); i < n; i++ {
					s.st.RawDelete(s.l.eventKey(i))
				}
			},
			want: []string{"missing@37", "missing@38", "missing@39", "unverified@-1"},
		},
		{
			name:    "stream ends early",
			records: func(recs []Record) []Record { return recs[:30] },
			want:    []string{"size@-1", "unverified@-1"},
		},
		{
			name:    "records skipped in the stream",
			records: func(recs []Record) []Record { return append(recs[:10:10], recs[15:]...) },
			want:    []string{"missing@10", "unverified@-1"},
		},
		{
			name:    "record repeated in the stream",
			records: func(recs []Record) []Record { return slices.Insert(recs, 6, recs[5]) },
			want:    []string{"order@5"},
		},
		{
			name: "extra record beyond the checkpoint",
			records: func(recs []Record) []Record {
				return append(recs, Record{Seq: n, Leaf: []byte(`{"seq":40}`)})
			},
			want: []string{"extra@-1"},
		},
		{
			name: "leaf without a sequence number",
			tamper: func(s setup) {
				s.st.RawPut(s.l.eventKey(9), []byte(`{"operation":"x"}`))
			},
			want: []string{"malformed@9", "root@-1"},
		},
		{
			name:     "checkpoint checked with the wrong key",
			wrongKey: true,
			want:     []string{"signature@-1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := memstore.New(memstore.WithMaxBatch(1024))
			key := newKey(t)
			l := openLog(t, st, key)
			appendN(t, l, 0, n)
			cp := head(t, l)
			if tc.tamper != nil {
				tc.tamper(setup{st, l, key})
			}
			recs := readAll(t, l, 0, cp.Size)
			if len(recs) != n {
				t.Fatalf("Read returned %d records, want %d (it must not stop at bad ones)", len(recs), n)
			}
			if tc.records != nil {
				recs = tc.records(recs)
			}
			pub := key.Public()
			if tc.wrongKey {
				pub = newKey(t).Public()
			}
			rep := verifyRecords(recs, VerifyOptions{Head: cp, PublicKey: pub, Origin: testOrigin})
			if got := sortedKinds(rep.Problems); !slices.Equal(got, tc.want) {
				t.Fatalf("problems %v, want %v\n%v", got, tc.want, rep.Problems)
			}
			if rep.OK() != (len(tc.want) == 0) {
				t.Fatalf("OK() = %v with problems %v", rep.OK(), rep.Problems)
			}
		})
	}
}

func TestVerifierCapsProblems(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(1024))
	key := newKey(t)
	l := openLog(t, st, key)
	appendN(t, l, 0, 20)
	cp := head(t, l)
	for i := range uint64(20) {
		st.SetCorrupt(l.eventKey(i))
	}
	rep := verifyRecords(readAll(t, l, 0, 20), VerifyOptions{Head: cp, PublicKey: key.Public(), MaxProblems: 5})
	if rep.Omitted != 15 || len(rep.Problems) != 6 || rep.OK() {
		t.Fatalf("got %d problems, %d omitted: %v", len(rep.Problems), rep.Omitted, rep.Problems)
	}
	if s := rep.Problems[0].String(); s == "" || rep.Problems[5].Seq != -1 {
		t.Fatalf("problem rendering: %q %+v", s, rep.Problems[5])
	}
}

func TestConsistencyWithEarlierCheckpoint(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(1024))
	key := newKey(t)
	clock := WithClock(func() time.Time { return time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC) })
	l := openLog(t, st, key, clock)
	// Checkpoints at sizes covering powers of two, odd sizes and equality.
	cps := map[uint64]checkpoint.Checkpoint{}
	sizes := []uint64{0, 1, 2, 3, 4, 7, 8, 13, 16, 25}
	for _, s := range sizes {
		appendN(t, l, int(l.Size()), int(s-l.Size()))
		cps[s] = head(t, l)
		if cps[s].Size != s {
			t.Fatalf("checkpoint size %d, want %d", cps[s].Size, s)
		}
	}
	final := cps[25]
	recs := readAll(t, l, 0, final.Size)
	for _, s := range sizes {
		t.Run(fmt.Sprintf("earlier size %d", s), func(t *testing.T) {
			e := cps[s]
			rep := verifyRecords(recs, VerifyOptions{Head: final, PublicKey: key.Public(), Earlier: &e})
			requireOK(t, rep)
			if !rep.Consistent {
				t.Fatal("consistency not reported")
			}
		})
	}

	// The same signing key signs a rewritten history: events 3.. differ.
	st2 := memstore.New(memstore.WithMaxBatch(1024))
	l2 := openLog(t, st2, key, clock)
	appendN(t, l2, 0, 3)
	appendN(t, l2, 1000, 22)
	forged := head(t, l2)
	forgedRecs := readAll(t, l2, 0, forged.Size)
	other := newKey(t)
	otherCP, err := checkpoint.Sign(other, testOrigin, cps[8].Size, cps[8].RootHash, cps[8].Time)
	if err != nil {
		t.Fatal(err)
	}
	renamed, err := checkpoint.Sign(key, "ward/elsewhere", cps[8].Size, cps[8].RootHash, cps[8].Time)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		head    checkpoint.Checkpoint
		recs    []Record
		earlier checkpoint.Checkpoint
		ekey    *ecdsa.PrivateKey
		want    []string
	}{
		{"rewritten after the earlier checkpoint's prefix", forged, forgedRecs, cps[3], nil, nil},
		{"history rewritten", forged, forgedRecs, cps[13], nil, []string{"inconsistent@-1"}},
		{"history rewritten, same size", forged, forgedRecs, cps[25], nil, []string{"inconsistent@-1"}},
		{"earlier larger than head", cps[8], recs[:8], cps[13], nil, []string{"inconsistent@-1"}},
		{"earlier signed by another key", final, recs, otherCP, nil, []string{"signature@-1"}},
		{"earlier key rotated", final, recs, otherCP, other, nil},
		{"earlier from another log", final, recs, renamed, nil, []string{"inconsistent@-1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := VerifyOptions{Head: tc.head, PublicKey: key.Public(), Earlier: &tc.earlier}
			if tc.ekey != nil {
				opts.EarlierKey = tc.ekey.Public()
			}
			rep := verifyRecords(tc.recs, opts)
			if got := sortedKinds(rep.Problems); !slices.Equal(got, tc.want) {
				t.Fatalf("problems %v, want %v\n%v", got, tc.want, rep.Problems)
			}
			if rep.Consistent != (len(tc.want) == 0) {
				t.Fatalf("Consistent = %v", rep.Consistent)
			}
		})
	}
	t.Run("unreadable prefix leaves consistency unverified", func(t *testing.T) {
		bad := slices.Clone(recs)
		bad[2] = Record{Seq: 2, Err: errors.New("barrier: authentication failed")}
		e := cps[13]
		rep := verifyRecords(bad, VerifyOptions{Head: final, PublicKey: key.Public(), Earlier: &e})
		want := []string{"unreadable@2", "unverified@-1", "unverified@-1"}
		if got := sortedKinds(rep.Problems); !slices.Equal(got, want) {
			t.Fatalf("problems %v, want %v", got, want)
		}
	})
}

// TestVerifierAgainstStoreRead runs the full pipeline on a tampered store
// with a chunked (etcd-sized) backend, reading through Log.Read.
func TestVerifierAgainstStoreRead(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(128))
	key := newKey(t)
	l := openLog(t, st, key)
	appendN(t, l, 0, 150)
	e := head(t, l)
	appendN(t, l, 150, 50)
	cp := head(t, l)
	var recs []Record
	if err := l.Read(context.Background(), 0, cp.Size, func(r Record) error { recs = append(recs, r); return nil }); err != nil {
		t.Fatal(err)
	}
	rep := verifyRecords(recs, VerifyOptions{Head: cp, PublicKey: key.Public(), Earlier: &e})
	requireOK(t, rep)
	if !rep.Consistent || rep.Records != 200 {
		t.Fatalf("report %+v", rep)
	}
}

func TestHeadAfterSigningKeyRotation(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(1024))
	old, cur := newKey(t), newKey(t)
	l := openLog(t, st, old)
	appendN(t, l, 0, 3)
	l.Close()
	l2 := openLog(t, st, cur)
	cp := head(t, l2)
	if err := checkpoint.Verify(cp, cur.Public()); err != nil || cp.Size != 3 {
		t.Fatalf("head after rotation: size %d, %v", cp.Size, err)
	}
	appendN(t, l2, 3, 2)
	requireOK(t, verifyLog(t, l2, cur.Public()))
}
