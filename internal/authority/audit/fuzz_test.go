package audit

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/json"
	"testing"
)

// fuzzKey is a fixed P-256 key so that fuzz seeds are reproducible.
func fuzzKey() *ecdsa.PrivateKey {
	d := sha256.Sum256([]byte("audit fuzz key"))
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
	if err != nil {
		panic(err)
	}
	return k
}

// FuzzLeafSeq checks the fast sequence-number reader against encoding/json
// on arbitrary (possibly tampered) leaves.
func FuzzLeafSeq(f *testing.F) {
	leaf, _ := EncodeEvent(testEvent(3))
	f.Add(leaf)
	f.Add([]byte(`{"seq":12345678901234567890,"x":1}`))
	f.Add([]byte(`{"seq":1}`))
	f.Add([]byte(`{"seq":01,"x":1}`))
	f.Add([]byte(`{"seq":1,"seq":2}`))
	f.Fuzz(func(t *testing.T, leaf []byte) {
		seq, ok := leafSeq(leaf)
		_, _ = DecodeEvent(leaf)
		if !ok || !json.Valid(leaf) {
			return
		}
		// With one "seq" key and no escapes, JSON must agree.
		if bytes.Count(bytes.ToLower(leaf), []byte("seq")) != 1 || bytes.Contains(leaf, []byte(`\`)) {
			return
		}
		var probe struct {
			Seq *uint64 `json:"seq"`
		}
		if err := json.Unmarshal(leaf, &probe); err == nil && probe.Seq != nil && *probe.Seq != seq {
			t.Fatalf("leafSeq = %d, JSON says %d for %q", seq, *probe.Seq, leaf)
		}
	})
}

// FuzzDecodeHead feeds stored head records to the decoder: anything it
// accepts must yield a computable root.
func FuzzDecodeHead(f *testing.F) {
	h := headRecord{Size: 3, Hashes: [][]byte{make([]byte, 32), make([]byte, 32)}}
	b, _ := encodeHead(&h)
	f.Add(b)
	f.Add([]byte(`{"v":1,"size":0,"hashes":[]}`))
	f.Add([]byte(`{"v":1,"size":18446744073709551615,"hashes":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := decodeHead(data)
		if err != nil {
			return
		}
		if _, err := rootOf(h.Size, h.Hashes); err != nil {
			t.Fatalf("accepted head has no root: %v", err)
		}
	})
}
