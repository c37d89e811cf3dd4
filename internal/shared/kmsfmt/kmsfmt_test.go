package kmsfmt

import (
	"bytes"
	"errors"
	"testing"
)

func TestValidateKeyName(t *testing.T) {
	good := []string{"a", "tenant-a/payments", "x.y_z-1/2/3"}
	bad := []string{"", "/a", "a/", "a//b", "A", "-a", "a b", "a/.b", string(make([]byte, 129))}
	for _, n := range good {
		if err := ValidateKeyName(n); err != nil {
			t.Errorf("%q: %v", n, err)
		}
	}
	for _, n := range bad {
		if err := ValidateKeyName(n); err == nil {
			t.Errorf("%q accepted", n)
		}
	}
}

func TestParseRoundTripAndArmor(t *testing.T) {
	h := Header{Alg: AlgAES256GCM, KeyName: "tenant-a/payments", Version: 7}
	ct := append(AppendHeader(nil, h), 1, 2, 3)
	got, raw, payload, err := Parse(ct)
	if err != nil {
		t.Fatal(err)
	}
	if got.KeyName != h.KeyName || got.Version != 7 || got.Alg != AlgAES256GCM || got.Format != FormatV1 {
		t.Fatalf("got %+v", got)
	}
	if !bytes.Equal(payload, []byte{1, 2, 3}) || len(raw) != len(ct)-3 {
		t.Fatalf("split wrong")
	}
	for _, in := range [][]byte{ct, []byte(Armor(ct)), []byte("  " + Armor(ct) + "\n")} {
		b, err := Dearmor(in)
		if err != nil || !bytes.Equal(b, ct) {
			t.Fatalf("dearmor: %v", err)
		}
	}
	for _, in := range []string{"hello", "ward:v1:!!!"} {
		if _, err := Dearmor([]byte(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: %v", in, err)
		}
	}
}

func TestParseRejects(t *testing.T) {
	good := AppendHeader(nil, Header{Alg: AlgAES256GCMHKDF, KeyName: "k", Version: 1})
	cases := map[string][]byte{
		"empty":         nil,
		"bad magic":     append([]byte("xKMS"), good[4:]...),
		"format 2":      func() []byte { b := bytes.Clone(good); b[4] = 2; return b }(),
		"alg 0":         func() []byte { b := bytes.Clone(good); b[5] = 0; return b }(),
		"name len 0":    func() []byte { b := bytes.Clone(good); b[6] = 0; return b }(),
		"truncated":     good[:len(good)-1],
		"version 0":     AppendHeader(nil, Header{Alg: AlgAES256GCM, KeyName: "k", Version: 0}),
		"bad name":      AppendHeader(nil, Header{Alg: AlgAES256GCM, KeyName: "K", Version: 1}),
		"name too long": func() []byte { b := bytes.Clone(good); b[6] = 200; return b }(),
	}
	for name, in := range cases {
		if _, _, _, err := Parse(in); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func TestContextEncodingUnambiguous(t *testing.T) {
	a := AppendContext(nil, map[string]string{"a": "bc"})
	b := AppendContext(nil, map[string]string{"ab": "c"})
	if bytes.Equal(a, b) {
		t.Fatal("ambiguous context encoding")
	}
	if !bytes.Equal(AppendContext(nil, nil), AppendContext(nil, map[string]string{})) {
		t.Fatal("nil and empty context differ")
	}
}

func FuzzParse(f *testing.F) {
	f.Add(AppendHeader(nil, Header{Alg: AlgAES256GCM, KeyName: "tenant-a/payments", Version: 1}))
	f.Add([]byte("ward:v1:d0tNUw=="))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, raw, payload, err := Parse(b)
		if err != nil {
			return
		}
		if len(raw)+len(payload) != len(b) {
			t.Fatal("split loses bytes")
		}
		if !bytes.Equal(AppendHeader(nil, h), raw) {
			t.Fatal("header does not re-encode to the same bytes")
		}
		_, _ = Dearmor(b)
	})
}
