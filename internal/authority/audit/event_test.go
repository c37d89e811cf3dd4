package audit

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/shared/checkpoint"
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

func TestCheckpointSignVerifyParse(t *testing.T) {
	key := newKey(t)
	root := sha256.Sum256([]byte("root"))
	at := time.Date(2026, 11, 21, 19, 0, 0, 123, time.UTC)
	cp, err := checkpoint.Sign(key, testOrigin, 42, root[:], at)
	if err != nil {
		t.Fatal(err)
	}
	if want := testOrigin + "\n42\n" + base64.StdEncoding.EncodeToString(root[:]) + "\n2026-11-21T19:00:00.000000123Z\n"; string(cp.SignedBody()) != want {
		t.Fatalf("signed body %q, want %q", cp.SignedBody(), want)
	}
	if err := checkpoint.Verify(cp, key.Public()); err != nil {
		t.Fatal(err)
	}
	file, err := checkpoint.Encode(cp)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := checkpoint.Parse(file)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(parsed, cp) {
		t.Fatalf("parse round trip:\n%+v\n%+v", parsed, cp)
	}
	if err := checkpoint.Verify(parsed, key.Public()); err != nil {
		t.Fatal(err)
	}

	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for _, tc := range []struct {
		name   string
		modify func(c *checkpoint.Checkpoint)
		key    any
	}{
		{"wrong key", nil, newKey(t).Public()},
		{"P-384 key", nil, p384.Public()},
		{"size changed", func(c *checkpoint.Checkpoint) { c.Size++ }, nil},
		{"root changed", func(c *checkpoint.Checkpoint) { c.RootHash = append([]byte{1}, c.RootHash[1:]...) }, nil},
		{"origin changed", func(c *checkpoint.Checkpoint) { c.Origin += "x" }, nil},
		{"time changed", func(c *checkpoint.Checkpoint) { c.Time = c.Time.Add(time.Nanosecond) }, nil},
		{"signature flipped", func(c *checkpoint.Checkpoint) { c.Signature = append([]byte{}, c.Signature...); c.Signature[8] ^= 1 }, nil},
		{"key id of another key", func(c *checkpoint.Checkpoint) { c.KeyID = strings.Repeat("a", 64) }, nil},
		{"no signature", func(c *checkpoint.Checkpoint) { c.Signature = nil }, nil},
		{"short root", func(c *checkpoint.Checkpoint) { c.RootHash = c.RootHash[:31] }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := cp
			if tc.modify != nil {
				tc.modify(&c)
			}
			k := tc.key
			if k == nil {
				k = key.Public()
			}
			if err := checkpoint.Verify(c, k); err == nil {
				t.Fatal("verified")
			}
		})
	}

	for _, bad := range []string{
		``,
		`{}`,
		`[]`,
		strings.Replace(string(file), `"size"`, `"sizes"`, 1),
		string(file) + `{}`,
		strings.Replace(string(file), `"origin": "ward/test.example"`, `"origin": "a\nb"`, 1),
		strings.Replace(string(file), `"size": 42`, `"size": -1`, 1),
		strings.Replace(string(file), `"size": 42`, `"size": 1e3`, 1),
		strings.Replace(string(file), cp.KeyID, strings.ToUpper(cp.KeyID), 1),
		string(file) + strings.Repeat(" ", checkpoint.MaxFileSize),
	} {
		if _, err := checkpoint.Parse([]byte(bad)); err == nil {
			t.Errorf("ParseCheckpoint accepted %q", bad)
		}
	}

	if _, err := checkpoint.Sign(p384, testOrigin, 1, root[:], at); err == nil {
		t.Error("signed with a P-384 key")
	}
	if _, err := checkpoint.Sign(key, testOrigin, 1, root[:16], at); err == nil {
		t.Error("signed a 16-byte root")
	}
}

func TestPublicKeyPEM(t *testing.T) {
	key := newKey(t)
	b, err := checkpoint.MarshalPublicKeyPEM(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	pub, err := checkpoint.ParsePublicKeyPEM(b)
	if err != nil || !key.PublicKey.Equal(pub) {
		t.Fatalf("round trip: %v", err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	b384, _ := checkpoint.MarshalPublicKeyPEM(p384.Public())
	for _, bad := range [][]byte{nil, []byte("junk"), b384, append(b, "trailing"...)} {
		if _, err := checkpoint.ParsePublicKeyPEM(bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}
