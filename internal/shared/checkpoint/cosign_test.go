package checkpoint

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"strings"
	"testing"
	"time"
)

func TestCosignVerify(t *testing.T) {
	logKey, witnessKey := newKey(t), newKey(t)
	root := sha256.Sum256([]byte("root"))
	cp := must(Sign(logKey, testOrigin, 42, root[:], time.Now()))
	cs, err := Cosign(witnessKey, "b.example", cp, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyCosignature(cs, witnessKey.Public()); err != nil {
		t.Fatal(err)
	}
	// A cosignature body is never a checkpoint body: a witness key that
	// also signs the witness's own checkpoints cannot be made to sign one
	// by cosigning.
	body := string(cs.CosignedBody())
	if !strings.HasPrefix(body, "ward-witness-cosignature/v1\n") || strings.Count(body, "\n") != 7 || strings.Count(string(cp.SignedBody()), "\n") != 4 {
		t.Fatalf("cosigned body %q", body)
	}
	if err := Verify(Checkpoint{Origin: "ward-witness-cosignature/v1", Size: 0, RootHash: root[:], Time: cs.Time, KeyID: cs.KeyID, Signature: cs.Signature}, witnessKey.Public()); err == nil {
		t.Fatal("a cosignature verified as a checkpoint")
	}
	for _, tc := range []struct {
		name   string
		modify func(c *Cosignature)
		key    *ecdsa.PrivateKey
	}{
		{"wrong key", nil, newKey(t)},
		{"log's key", nil, logKey},
		{"size changed", func(c *Cosignature) { c.Checkpoint.Size-- }, nil},
		{"root changed", func(c *Cosignature) { c.Checkpoint.RootHash = append([]byte{1}, c.Checkpoint.RootHash[1:]...) }, nil},
		{"witness renamed", func(c *Cosignature) { c.Witness = "c.example" }, nil},
		{"time changed", func(c *Cosignature) { c.Time = c.Time.Add(time.Second) }, nil},
		{"no signature", func(c *Cosignature) { c.Signature = nil }, nil},
	} {
		c := cs
		c.Checkpoint.RootHash = append([]byte(nil), cs.Checkpoint.RootHash...)
		if tc.modify != nil {
			tc.modify(&c)
		}
		pub := witnessKey.Public()
		if tc.key != nil {
			pub = tc.key.Public()
		}
		if err := VerifyCosignature(c, pub); err == nil {
			t.Errorf("%s: verified", tc.name)
		}
	}
}
