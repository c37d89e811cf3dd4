package audit

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/shared/checkpoint"
	"github.com/wardproject/ward/internal/shared/keyutil"
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

// FuzzParseCheckpoint feeds untrusted checkpoint files to the parser: it
// must not panic, and whatever it accepts must re-encode to an equal value.
func FuzzParseCheckpoint(f *testing.F) {
	key := fuzzKey()
	root := sha256.Sum256(nil)
	cp, err := checkpoint.Sign(key, testOrigin, 7, root[:], time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		f.Fatal(err)
	}
	file, _ := checkpoint.Encode(cp)
	f.Add(file)
	compact, _ := json.Marshal(cp)
	f.Add(compact)
	f.Add([]byte(`{"origin":"x","size":1,"root_hash":"","time":"2026-01-01T00:00:00Z","key_id":"","signature":""}`))
	f.Add([]byte(`{"size":18446744073709551615}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		cp, err := checkpoint.Parse(data)
		if err != nil {
			return
		}
		_ = checkpoint.Verify(cp, key.Public())
		again, err := checkpoint.Encode(cp)
		if err != nil {
			t.Fatalf("accepted checkpoint does not encode: %v", err)
		}
		back, err := checkpoint.Parse(again)
		if err != nil {
			t.Fatalf("re-encoded checkpoint rejected: %v\n%s", err, again)
		}
		if !reflect.DeepEqual(back, cp) || !bytes.Equal(back.SignedBody(), cp.SignedBody()) {
			t.Fatalf("round trip changed the checkpoint:\n%+v\n%+v", cp, back)
		}
	})
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

// FuzzParsePublicKeyPEM feeds untrusted PEM to the key parser.
func FuzzParsePublicKeyPEM(f *testing.F) {
	b, _ := checkpoint.MarshalPublicKeyPEM(fuzzKey().Public())
	f.Add(b)
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		pub, err := checkpoint.ParsePublicKeyPEM(data)
		if err != nil {
			return
		}
		if _, err := keyutil.CheckpointKeyID(pub); err != nil {
			t.Fatalf("accepted key has no id: %v", err)
		}
	})
}
