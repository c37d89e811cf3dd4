package policy

import (
	"strings"
	"testing"
)

// A chain through a tainted CA key is refused before any policy runs, even
// when a permit matches and the serial and SPIFFE ID are not deny-listed.
func TestTaintedKeyInChainDenies(t *testing.T) {
	const k = "00112233445566778899aabbccddeeff00112233"
	set, err := CompileBundle(Bundle{Version: 4, Files: map[string][]byte{"a.cedar": []byte(shopPolicy)},
		DenyList: DenyList{TaintedKeys: []string{strings.ToUpper(k)}}})
	if err != nil {
		t.Fatal(err)
	}
	ok := connect(web, "api")
	if d := set.Decide(ok); !d.Allowed {
		t.Fatalf("precondition: web -> api should be allowed: %+v", d)
	}
	other := "ffeeddccbbaa99887766554433221100ffeeddcc"
	for _, tc := range []struct {
		name  string
		chain []string
		deny  bool
	}{
		{"no chain", nil, false},
		{"clean chain", []string{other}, false},
		{"intermediate tainted", []string{other, k}, true},
		{"upper case in request", []string{strings.ToUpper(k)}, true},
	} {
		d := set.Decide(with(ok, func(r *Request) { r.ChainKeyIDs = tc.chain }))
		if tc.deny != !d.Allowed {
			t.Errorf("%s: %+v", tc.name, d)
			continue
		}
		if tc.deny && (d.Cause != CauseTaintedKey || d.Cause.String() != "tainted-ca-key" ||
			len(d.Reasons) != 1 || d.Reasons[0] != ReasonTaintedKeyPrefix+k || d.Version != 4) {
			t.Errorf("%s: decision does not name the tainted key: %+v", tc.name, d)
		}
	}
	if got := set.DenyList().TaintedKeys; len(got) != 1 || got[0] != k {
		t.Errorf("canonical tainted keys %v", got)
	}
	// Diff shows the taint.
	plain, _ := CompileBundle(Bundle{Files: map[string][]byte{"a.cedar": []byte(shopPolicy)}})
	if d := DiffSets(plain, set); d.Empty() || !strings.Contains(d.String(), "+ deny tainted CA key "+k) {
		t.Errorf("diff %q", d.String())
	}
}

func TestTaintedKeyIDValidated(t *testing.T) {
	for _, bad := range []string{"", "abc", strings.Repeat("g", KeyIDLen), strings.Repeat("a", KeyIDLen+2)} {
		_, err := CompileBundle(Bundle{Files: map[string][]byte{"a.cedar": []byte(shopPolicy)},
			DenyList: DenyList{TaintedKeys: []string{bad}}})
		if err == nil || !strings.Contains(err.Error(), "tainted CA key ID") {
			t.Errorf("%q accepted or unclear error: %v", bad, err)
		}
	}
	raw := []byte(`{"version":2,"files":{},"deny_list":{"tainted_keys":["00112233445566778899aabbccddeeff00112233"]}}`)
	b, err := ParseBundle(raw)
	if err != nil || len(b.DenyList.TaintedKeys) != 1 {
		t.Fatalf("tainted_keys not parsed: %v %+v", err, b)
	}
}
