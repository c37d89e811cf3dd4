package shamir

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"
)

// refMul is a textbook carry-less multiply then reduce, branches and all:
// used only to check the constant-time mul.
func refMul(a, b byte) byte {
	var p uint16
	for i := 0; i < 8; i++ {
		if b&(1<<i) != 0 {
			p ^= uint16(a) << i
		}
	}
	for i := 15; i >= 8; i-- {
		if p&(1<<i) != 0 {
			p ^= 0x11b << (i - 8)
		}
	}
	return byte(p)
}

func TestFieldArithmetic(t *testing.T) {
	for a := 0; a < 256; a++ {
		for b := 0; b < 256; b++ {
			if got, want := mul(byte(a), byte(b)), refMul(byte(a), byte(b)); got != want {
				t.Fatalf("mul(%#x, %#x) = %#x, want %#x", a, b, got, want)
			}
		}
	}
	if inv(0) != 0 {
		t.Fatalf("inv(0) = %#x, want 0", inv(0))
	}
	for a := 1; a < 256; a++ {
		if p := mul(byte(a), inv(byte(a))); p != 1 {
			t.Fatalf("a * inv(a) = %#x for a = %#x", p, a)
		}
	}
	// Known AES field facts: {53} * {CA} = {01}, {57} * {83} = {C1}.
	if mul(0x53, 0xca) != 1 || mul(0x57, 0x83) != 0xc1 {
		t.Fatal("mul disagrees with FIPS-197 examples")
	}
}

// subsets calls f with every subset of {0..n-1} of size k.
func subsets(n, k int, f func([]int)) {
	idx := make([]int, k)
	var rec func(start, depth int)
	rec = func(start, depth int) {
		if depth == k {
			f(idx)
			return
		}
		for i := start; i < n; i++ {
			idx[depth] = i
			rec(i+1, depth+1)
		}
	}
	rec(0, 0)
}

func pick(shares [][]byte, idx []int) [][]byte {
	out := make([][]byte, len(idx))
	for i, j := range idx {
		out[i] = shares[j]
	}
	return out
}

func TestSplitCombineAllSubsets(t *testing.T) {
	for _, tc := range []struct{ n, t int }{{2, 2}, {3, 2}, {5, 3}, {6, 6}, {7, 4}} {
		secret := make([]byte, 32)
		rand.Read(secret)
		shares, err := Split(secret, tc.n, tc.t)
		if err != nil {
			t.Fatalf("Split(n=%d, t=%d): %v", tc.n, tc.t, err)
		}
		if len(shares) != tc.n {
			t.Fatalf("got %d shares, want %d", len(shares), tc.n)
		}
		for i, s := range shares {
			if len(s) != len(secret)+1 || s[len(secret)] != byte(i+1) {
				t.Fatalf("share %d: len %d, x %d", i, len(s), s[len(s)-1])
			}
		}
		for k := tc.t; k <= tc.n; k++ {
			subsets(tc.n, k, func(idx []int) {
				got, err := Combine(pick(shares, idx))
				if err != nil || !bytes.Equal(got, secret) {
					t.Fatalf("n=%d t=%d subset %v: got %x, %v", tc.n, tc.t, idx, got, err)
				}
			})
		}
		// threshold-1 shares (when at least 2) must not give the secret.
		if tc.t-1 >= 2 {
			subsets(tc.n, tc.t-1, func(idx []int) {
				got, err := Combine(pick(shares, idx))
				if err != nil {
					t.Fatalf("Combine of %v: %v", idx, err)
				}
				if bytes.Equal(got, secret) {
					t.Fatalf("n=%d t=%d: %d shares %v recovered the secret", tc.n, tc.t, tc.t-1, idx)
				}
			})
		}
		// A single share never combines.
		if _, err := Combine(shares[:1]); !errors.Is(err, ErrShares) {
			t.Fatalf("Combine of one share: %v", err)
		}
	}
}

func TestMaxShares(t *testing.T) {
	secret := []byte("ward root key stand-in, 32 bytes")
	shares, err := Split(secret, 255, 255)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Combine(shares)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("255-of-255: %q, %v", got, err)
	}
	if got, _ := Combine(shares[1:]); bytes.Equal(got, secret) {
		t.Fatal("254 of 255-of-255 shares recovered the secret")
	}
}

// Shares of two splits of the same secret must differ (fresh randomness).
func TestSplitIsRandomised(t *testing.T) {
	secret := make([]byte, 32)
	a, _ := Split(secret, 3, 2)
	b, _ := Split(secret, 3, 2)
	for i := range a {
		if bytes.Equal(a[i], b[i]) {
			t.Fatalf("share %d identical across two splits", i+1)
		}
		if bytes.Equal(a[i][:32], secret) {
			t.Fatalf("share %d equals the secret", i+1)
		}
	}
}

func TestSplitParams(t *testing.T) {
	for _, tc := range []struct {
		name      string
		secret    []byte
		n, thresh int
	}{
		{"empty secret", nil, 3, 2},
		{"threshold 1", []byte{1}, 1, 1},
		{"threshold 0", []byte{1}, 3, 0},
		{"negative threshold", []byte{1}, 3, -1},
		{"shares below threshold", []byte{1}, 2, 3},
		{"too many shares", []byte{1}, 256, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if s, err := Split(tc.secret, tc.n, tc.thresh); !errors.Is(err, ErrParams) || s != nil {
				t.Fatalf("Split = %v, %v; want ErrParams", s, err)
			}
		})
	}
}

func TestCombineErrors(t *testing.T) {
	shares, _ := Split([]byte("secret"), 3, 2)
	zeroX := bytes.Clone(shares[1])
	zeroX[len(zeroX)-1] = 0
	dup := bytes.Clone(shares[0])
	dup[0] ^= 1
	for _, tc := range []struct {
		name   string
		shares [][]byte
	}{
		{"none", nil},
		{"one", shares[:1]},
		{"duplicate x", [][]byte{shares[0], dup}},
		{"same share twice", [][]byte{shares[0], shares[0]}},
		{"length mismatch", [][]byte{shares[0], shares[1][1:]}},
		{"too short", [][]byte{{1}, {2}}},
		{"empty", [][]byte{{}, {}}},
		{"zero x", [][]byte{shares[0], zeroX}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if s, err := Combine(tc.shares); !errors.Is(err, ErrShares) || s != nil {
				t.Fatalf("Combine = %x, %v; want ErrShares", s, err)
			}
		})
	}
}

func FuzzCombine(f *testing.F) {
	shares, _ := Split([]byte("fuzz seed secret"), 3, 2)
	f.Add(shares[0], shares[1], shares[2])
	f.Add([]byte{1, 1}, []byte{2, 2}, []byte{})
	f.Add([]byte{0}, []byte{0}, []byte{0})
	f.Fuzz(func(t *testing.T, a, b, c []byte) {
		for _, set := range [][][]byte{{a}, {a, b}, {a, b, c}, {c, a}} {
			got, err := Combine(set)
			if err == nil && len(got) != len(a)-1 {
				t.Fatalf("Combine returned %d bytes from shares of %d", len(got), len(a))
			}
		}
	})
}

func BenchmarkSplit32(b *testing.B) {
	secret := make([]byte, 32)
	for b.Loop() {
		Split(secret, 5, 3)
	}
}

func BenchmarkCombine32(b *testing.B) {
	shares, _ := Split(make([]byte, 32), 5, 3)
	for b.Loop() {
		Combine(shares[:3])
	}
}
