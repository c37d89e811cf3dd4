package audit

import (
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"
)

// checkBody: encodeBody (appendBody, or its json.Marshal fallback) equals
// json.Marshal of the body, byte for byte: the encoding is the Merkle leaf.
func checkBody(t *testing.T, e Event) {
	t.Helper()
	got, err := encodeBody(&e)
	if err != nil {
		return // invalid events are refused either way
	}
	want, err := json.Marshal(eventBody{
		Time: e.Time.UTC().Round(0), RequestID: e.RequestID, Actor: e.Actor,
		Operation: e.Operation, Key: e.Key, KeyVersion: e.KeyVersion, Result: e.Result,
		Error: e.Error, Fields: e.Fields, Count: e.Count,
	})
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("event %+v:\ngot  %s\nwant %s", e, got, want)
	}
}

// TestAppendBodyMatchesJSON compares the two encodings on random events,
// plain and with characters encoding/json escapes.
func TestAppendBodyMatchesJSON(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 17))
	alphabet := []string{"a", "Z", "0", "-", ".", ":", "/", " ", "_", "=", "\"", "\\", "<", ">", "&", "\n", "\t", "\x01", "é", "\u2028", "\xff", "\x7f"}
	str := func(special bool) string {
		n := r.IntN(12)
		s := ""
		for range n {
			if special && r.IntN(4) == 0 {
				s += alphabet[9+r.IntN(len(alphabet)-9)]
			} else {
				s += alphabet[r.IntN(9)]
			}
		}
		return s
	}
	plainSeen := 0
	for i := range 20000 {
		special := i%5 == 0
		e := Event{
			Time:      time.Unix(r.Int64N(1<<34), r.Int64N(1e9)).In(time.FixedZone("x", 3600*(r.IntN(5)-2))),
			RequestID: str(special), Actor: str(special), Operation: "op" + str(special), Key: str(special),
			KeyVersion: uint32(r.IntN(3)), Result: []string{ResultOK, ResultError, ResultDenied, ResultStarted}[r.IntN(4)],
			Error: str(special), Count: r.IntN(3),
		}
		if r.IntN(2) == 0 {
			e.Fields = map[string]string{}
			for range r.IntN(20) {
				e.Fields[str(special)] = str(special)
			}
		}
		if r.IntN(10) == 0 {
			e.Time = e.Time.Round(time.Second)
		}
		body := eventBody{Time: e.Time.UTC(), RequestID: e.RequestID, Actor: e.Actor, Operation: e.Operation, Key: e.Key, Result: e.Result, Error: e.Error, Fields: e.Fields}
		if _, ok := appendBody(nil, &body); ok {
			plainSeen++
		}
		checkBody(t, e)
	}
	if plainSeen < 10000 {
		t.Fatalf("appendBody took only %d of 20000 events", plainSeen)
	}
}

func FuzzAppendBody(f *testing.F) {
	f.Add("req-1", "admin:uid=0", "kms.encrypt", "k", "ok", "", "context.a", "h", int64(1700000000), int64(5), uint32(1), 2)
	f.Add("<&>", "\"", "op\n", "\xff", "error", "e\\", "", "", int64(0), int64(0), uint32(0), 0)
	f.Fuzz(func(t *testing.T, rid, actor, op, key, result, errs, fk, fv string, sec, nsec int64, kv uint32, count int) {
		e := Event{Time: time.Unix(sec, nsec), RequestID: rid, Actor: actor, Operation: op, Key: key, KeyVersion: kv, Result: result, Error: errs, Count: count}
		if fk != "" || fv != "" {
			e.Fields = map[string]string{fk: fv, "b": "c"}
		}
		checkBody(t, e)
	})
}

// BenchmarkEncodeBody is one audited KMS call's event encoding: encodeBody
// (appendBody) against encoding/json, its reference.
func BenchmarkEncodeBody(b *testing.B) {
	e := Event{Time: time.Now(), RequestID: "0123456789abcdef", Actor: "admin:uid=0", Operation: "kms.encrypt",
		Key: "bench", KeyVersion: 1, Result: ResultOK, Fields: map[string]string{"bytes": "32", "context.app": "0a1b2c3d4e5f"}}
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := encodeBody(&e); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(eventBody{Time: e.Time.UTC().Round(0), RequestID: e.RequestID, Actor: e.Actor, Operation: e.Operation,
				Key: e.Key, KeyVersion: e.KeyVersion, Result: e.Result, Fields: e.Fields}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
