package audit

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestEncodeEventIsDeterministicJSON(t *testing.T) {
	berlin := time.FixedZone("CET", 3600)
	for _, tc := range []struct {
		name string
		e    Event
		want string
	}{
		{
			name: "minimal",
			e:    Event{Seq: 0, Time: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), Operation: "operator.unseal", Result: ResultOK},
			want: `{"seq":0,"time":"2026-01-02T03:04:05.000000006Z","operation":"operator.unseal","result":"ok"}`,
		},
		{
			name: "full, non-UTC time, map order",
			e: Event{
				Seq: 18446744073709551615, Time: time.Date(2026, 1, 2, 4, 4, 5, 0, berlin), RequestID: "r1", Actor: "admin:uid=0",
				Operation: "kms.encrypt", Key: "k", KeyVersion: 2, Result: ResultError, Error: "bad <ctx>",
				Fields: map[string]string{"z": "1", "a": "2"}, Count: 3,
			},
			want: `{"seq":18446744073709551615,"time":"2026-01-02T03:04:05Z","request_id":"r1","actor":"admin:uid=0",` +
				`"operation":"kms.encrypt","key":"k","key_version":2,"result":"error","error":"bad \u003cctx\u003e",` +
				`"fields":{"a":"2","z":"1"},"count":3}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := EncodeEvent(tc.e)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("got  %s\nwant %s", got, tc.want)
			}
			utc := tc.e
			utc.Time = utc.Time.UTC()
			std, _ := json.Marshal(utc)
			if !bytes.Equal(got, std) {
				t.Fatalf("differs from json.Marshal:\n%s\n%s", got, std)
			}
			back, err := DecodeEvent(got)
			if err != nil || !reflect.DeepEqual(back, utc) {
				t.Fatalf("round trip: %+v, %v", back, err)
			}
			if s, ok := leafSeq(got); !ok || s != tc.e.Seq {
				t.Fatalf("leafSeq = %d, %v", s, ok)
			}
		})
	}
}

func TestLeafSeq(t *testing.T) {
	for _, tc := range []struct {
		leaf string
		seq  uint64
		ok   bool
	}{
		{`{"seq":0,"x":1}`, 0, true},
		{`{"seq":42}`, 42, true},
		{`{ "seq" : 7 }`, 7, true},                 // not canonical: JSON fallback
		{`{"a":1,"seq":9}`, 9, true},               // fallback
		{`{"seq":07,"x":1}`, 0, false},             // leading zero is not JSON
		{`{"seq":-1}`, 0, false},                   // negative
		{`{"seq":18446744073709551616}`, 0, false}, // overflow
		{`{"operation":"x"}`, 0, false},
		{`not json`, 0, false},
		{``, 0, false},
	} {
		seq, ok := leafSeq([]byte(tc.leaf))
		if seq != tc.seq || ok != tc.ok {
			t.Errorf("leafSeq(%s) = %d, %v; want %d, %v", tc.leaf, seq, ok, tc.seq, tc.ok)
		}
	}
}

func TestHasher(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	h, err := NewHasher(key)
	if err != nil {
		t.Fatal(err)
	}
	h2, _ := NewHasher(bytes.Repeat([]byte{8}, 32))
	v := h.HashValue("tenant-42")
	if !strings.HasPrefix(v, HashPrefix) || len(v) != len(HashPrefix)+64 {
		t.Fatalf("HashValue = %q", v)
	}
	if strings.Contains(v, "tenant-42") || v != h.HashValue("tenant-42") || v == h.HashValue("tenant-43") || v == h2.HashValue("tenant-42") {
		t.Fatal("HashValue is not a keyed deterministic digest")
	}
	key[0] = 9 // the Hasher keeps its own copy
	if v != h.HashValue("tenant-42") {
		t.Fatal("Hasher aliases the caller's key")
	}
	ctx := map[string]string{"tenant": "tenant-42", "bucket": "b"}
	got := h.HashContext(ctx)
	if len(got) != 2 || got["tenant"] != v || got["bucket"] != h.HashValue("b") || ctx["tenant"] != "tenant-42" {
		t.Fatalf("HashContext = %v (input %v)", got, ctx)
	}
	if h.HashContext(nil) != nil {
		t.Fatal("HashContext(nil) != nil")
	}
	if _, err := NewHasher(make([]byte, 31)); err == nil {
		t.Fatal("short key accepted")
	}
}
