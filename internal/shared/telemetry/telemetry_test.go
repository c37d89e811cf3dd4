package telemetry

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func sample() NodeReport {
	return NodeReport{Agent: Report{Kind: KindAgent, FIPS: true, SVIDs: []SVID{{SPIFFEID: "spiffe://td/ward/agent/n", ExpiresAt: time.Unix(1e9, 0).UTC()}}},
		Processes: []Report{{Kind: KindProxy, Name: "p", Listeners: []Listener{{Name: "in", Address: "127.0.0.1:1", Direction: "inbound", Service: "s", MTLS: true, MinTLS: "1.3"}},
			TLSVersions: map[string]uint64{"1.3": 3}, Groups: map[string]uint64{"X25519MLKEM768": 3}, MTLS: 3, Denials: 1}}}
}

func TestDecodeRoundTrip(t *testing.T) {
	b, _ := json.Marshal(sample())
	r, err := DecodeNodeReport(b)
	if err != nil {
		t.Fatal(err)
	}
	if r.Processes[0].Listeners[0].Service != "s" || r.Processes[0].TLSVersions["1.3"] != 3 {
		t.Fatalf("%+v", r)
	}
}

func TestDecodeRefuses(t *testing.T) {
	big := sample()
	for i := 0; i <= MaxListeners; i++ {
		big.Processes[0].Listeners = append(big.Processes[0].Listeners, Listener{Name: "l", Direction: "inbound"})
	}
	many := sample()
	for i := 0; i <= MaxProcesses; i++ {
		many.Processes = append(many.Processes, Report{Kind: KindProxy})
	}
	asAgent := sample()
	asAgent.Processes[0].Kind = KindAgent
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"oversize", []byte(`{"agent":{"kind":"agent","name":"` + strings.Repeat("a", MaxNodeReportBytes) + `"}}`), "at most"},
		{"unknown field", []byte(`{"agent":{"kind":"agent"},"extra":1}`), "unknown field"},
		{"trailing", []byte(`{"agent":{"kind":"agent"}} {}`), "trailing"},
		{"no agent", []byte(`{}`), "kind"},
		{"listeners", mustJSON(big), "listeners"},
		{"processes", mustJSON(many), "processes"},
		{"second agent", mustJSON(asAgent), "only the node's own"},
		{"bad direction", []byte(`{"agent":{"kind":"agent","listeners":[{"name":"x","address":"a","direction":"sideways","mtls":false}]}}`), "direction"},
	}
	for _, tc := range tests {
		if _, err := DecodeNodeReport(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	if _, err := DecodeReport([]byte(`{"kind":"proxy","name":"` + strings.Repeat("a", MaxReportBytes) + `"}`)); err == nil {
		t.Error("oversize process report accepted")
	}
}

func mustJSON(v any) []byte { b, _ := json.Marshal(v); return b }

func FuzzDecodeNodeReport(f *testing.F) {
	f.Add(mustJSON(sample()))
	f.Add([]byte(`{"agent":{"kind":"agent"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeNodeReport(b)
		if err != nil {
			return
		}
		// What decodes stays within the bounds once encoded again.
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeNodeReport(out); err != nil && len(out) <= MaxNodeReportBytes {
			t.Fatalf("re-encoded report refused: %v", err)
		}
	})
}

func FuzzDecodeReport(f *testing.F) {
	f.Add(mustJSON(sample().Processes[0]))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeReport(b)
		if err != nil {
			return
		}
		if len(r.Listeners) > MaxListeners || len(r.SVIDs) > MaxSVIDs {
			t.Fatal("bounds not enforced")
		}
	})
}
