package report

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

var now = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)

func sampleInput() Input {
	day := 24 * time.Hour
	in := Input{
		Generated: now, TrustDomain: "prod.example.org", Version: "test", RotationGrace: time.Hour,
		Classifications: []Classification{{Name: "confidential", RotationPeriod: 30 * day}, {Name: "restricted", RotationPeriod: 7 * day}},
		Keys: []Key{
			{Name: "ok-key", Classification: "confidential", RotationPeriod: 30 * day, LatestVersion: 2,
				Versions: []KeyVersion{{1, "decrypt-only", now.Add(-40 * day)}, {2, "active", now.Add(-10 * day)}}},
			{Name: "late-key", Classification: "restricted", RotationPeriod: 7 * day, LatestVersion: 1,
				Versions: []KeyVersion{{1, "active", now.Add(-9 * day)}}},
			{Name: "manual", Classification: "confidential", LatestVersion: 1, Versions: []KeyVersion{{1, "active", now.Add(-100 * day)}}},
		},
		Entries:        []Entry{{ID: "e1", SPIFFEID: "spiffe://prod.example.org/a", TTL: time.Hour}, {ID: "e2", SPIFFEID: "spiffe://prod.example.org/b"}},
		DefaultSVIDTTL: 4 * time.Hour,
		CAKeys:         []CAKey{{ID: "root1", Kind: "root", State: "active", NotBefore: now.Add(-day), NotAfter: now.Add(365 * day)}, {ID: "int1", Kind: "intermediate", State: "active", NotBefore: now.Add(-time.Hour), NotAfter: now.Add(47 * time.Hour)}},
		Agents:         []Agent{{SPIFFEID: "spiffe://prod.example.org/ward/agent/n1", Serial: "0a", Expires: now.Add(30 * time.Minute)}},
		Audit:          Audit{Checked: true, Verified: true, Origin: "ward/prod.example.org", Size: 42, Root: "ab12", KeyID: "k1", Time: now},
		Events: []Event{
			{Seq: 5, Time: now.Add(-10 * day), Operation: "key.rotate", Key: "ok-key", Result: "ok"},
			{Seq: 7, Time: now.Add(-time.Hour), Operation: "policy.revoke", Actor: "uid:0", Result: "started", Fields: map[string]string{"spiffe_ids": "[spiffe://prod.example.org/bad]", "serials": "[]"}},
			{Seq: 8, Time: now.Add(-time.Hour + 40*time.Millisecond), Operation: "policy.revoke", Actor: "uid:0", Result: "ok", Fields: map[string]string{"spiffe_ids": "[spiffe://prod.example.org/bad]", "serials": "[]", "policy_version": "3"}},
		},
		Alerts: []Alert{{Seq: 9, Time: now, Kind: "decrypt_burst", Caller: "spiffe://prod.example.org/x", Key: "ok-key", Detail: "burst"}},
	}
	return in
}

func TestBuild(t *testing.T) {
	r := Build(sampleInput())
	if r.Rotation.Compliant != 1 || r.Rotation.Overdue != 1 || r.Rotation.NoSchedule != 1 {
		t.Fatalf("rotation = %+v", r.Rotation)
	}
	if len(r.Rotation.OverdueKeys) != 1 || r.Rotation.OverdueKeys[0].Name != "late-key" || time.Duration(r.Rotation.OverdueKeys[0].OverdueBy) != 2*24*time.Hour {
		t.Fatalf("overdue = %+v", r.Rotation.OverdueKeys)
	}
	var conf ClassificationStats
	for _, c := range r.Rotation.PerClassification {
		if c.Name == "confidential" {
			conf = c
		}
	}
	if conf.Rotations != 1 || time.Duration(conf.Median) != 30*24*time.Hour || !strings.Contains(conf.MaxEvidence, "ok-key") {
		t.Fatalf("confidential = %+v", conf)
	}
	if r.Revocations.Count != 1 || r.Revocations.Items[0].StartSeq != 7 || time.Duration(r.Revocations.Items[0].Publish) != 40*time.Millisecond ||
		r.Revocations.Items[0].PolicyVersion != "3" {
		t.Fatalf("revocations = %+v", r.Revocations)
	}
	if n := r.Certificates.Nearest; len(n) != 3 || n[0].Kind != "agent SVID" || n[1].Subject != "int1" {
		t.Fatalf("nearest = %+v", n)
	}
	if b := r.Certificates.TTLBuckets; b[0].Count != 1 || b[1].Count != 1 {
		t.Fatalf("ttl buckets = %+v", b)
	}
	if r.Drift.Configured || r.Coverage.Measured {
		t.Fatalf("drift/coverage should be unconfigured: %+v %+v", r.Drift, r.Coverage)
	}
	var h = map[string]Headline{}
	for _, x := range r.Summary {
		h[x.Label] = x
	}
	if h["Key rotation compliance"].Status != StatusFail || h["Drift"].Value != "not configured" || h["Encryption coverage"].Value != "not measured" ||
		h["Audit log"].Status != StatusOK || !strings.Contains(h["Audit log"].Evidence, "size 42") {
		t.Fatalf("summary = %+v", r.Summary)
	}
	for _, x := range r.Summary {
		if x.Evidence == "" {
			t.Errorf("headline %q has no evidence", x.Label)
		}
	}
}

func TestCoverageAndDrift(t *testing.T) {
	in := sampleInput()
	in.Coverage = []Coverage{{Source: "http://127.0.0.1:9100/metrics", MTLS: 90, TLS13: 90, PQ: 80}, {Source: "telemetry", MTLS: 0, Plaintext: 10}}
	in.Drift = &Drift{Source: "ward drift", Findings: []Finding{{Severity: "fail", Object: "key late-key", Rule: "rotation", Evidence: "x", Fix: "rotate"}}}
	r := Build(in)
	if !r.Coverage.Measured || r.Coverage.Percent != 90 || r.Coverage.MTLS != 90 || r.Coverage.Plaintext != 10 {
		t.Fatalf("coverage = %+v", r.Coverage)
	}
	if !r.Drift.Configured || len(r.Drift.Findings) != 1 {
		t.Fatalf("drift = %+v", r.Drift)
	}
	var buf bytes.Buffer
	if err := WriteHTML(&buf, r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"90.0%", "key late-key", "Connections seen by reporters"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("HTML lacks %q", want)
		}
	}
}

// Names come from the store and callers choose them: a key, an entry, an
// actor or a drift finding named like markup must come out as text.
func TestHTMLEscapesStoreNames(t *testing.T) {
	in := sampleInput()
	evil := `<script>alert(1)</script>`
	in.Keys[1].Name = evil
	in.Keys[1].Classification = `"><img src=x onerror=alert(1)>`
	in.Entries[0].ID = evil
	in.Entries[0].TTL = 1000 * time.Hour
	in.Agents[0].SPIFFEID = "spiffe://x/" + evil
	in.Events[1].Actor, in.Events[2].Actor = evil, evil
	in.Alerts[0].Caller = evil
	in.Drift = &Drift{Source: evil, Findings: []Finding{{Severity: `fail" onmouseover="x`, Object: evil, Rule: evil, Evidence: evil, Fix: evil}}}
	in.Coverage = []Coverage{{Source: evil, MTLS: 1}}
	in.TrustDomain = evil
	var buf bytes.Buffer
	if err := WriteHTML(&buf, Build(in)); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, bad := range []string{"<script", "<img", `onmouseover="x`} {
		if strings.Contains(out, bad) {
			i := strings.Index(out, bad)
			t.Fatalf("unescaped %q in the report: ...%s...", bad, out[max(0, i-80):min(len(out), i+80)])
		}
	}
	if !strings.Contains(out, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Fatal("the escaped name is missing from the report")
	}
	// Self-contained: nothing to fetch.
	for _, ext := range []string{"src=", "href=", "@import", "url("} {
		if strings.Contains(strings.ReplaceAll(out, "&lt;img src=x", ""), ext) {
			t.Errorf("the report references something external: %q", ext)
		}
	}
}

func TestJSON(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteJSON(&buf, Build(sampleInput())); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	rot := m["key_rotation"].(map[string]any)
	if rot["overdue"].(float64) != 1 {
		t.Fatalf("key_rotation = %v", rot)
	}
	// durations are seconds
	if g := rot["grace"].(float64); g != 3600 {
		t.Fatalf("grace = %v, want 3600 seconds", g)
	}
	if d := m["drift"].(map[string]any); d["configured"] != false {
		t.Fatalf("drift = %v", d)
	}
}

func TestEmptyInput(t *testing.T) {
	var buf bytes.Buffer
	r := Build(Input{Generated: now})
	if err := WriteHTML(&buf, r); err != nil {
		t.Fatal(err)
	}
	if err := WriteJSON(&buf, r); err != nil {
		t.Fatal(err)
	}
}

// BigInput is 10,000 keys (a few versions each) and 100,000 entries.
func BigInput(keys, entries int) Input {
	in := sampleInput()
	in.Keys, in.Entries = nil, nil
	day := 24 * time.Hour
	for i := range keys {
		k := Key{Name: fmt.Sprintf("tenant-%d/key-%d", i%100, i), Classification: in.Classifications[i%2].Name, RotationPeriod: in.Classifications[i%2].RotationPeriod}
		for v := range 4 {
			k.Versions = append(k.Versions, KeyVersion{Version: uint32(v + 1), State: "decrypt-only", Created: now.Add(-time.Duration(40-v*(i%13)) * day)})
		}
		k.LatestVersion = 4
		in.Keys = append(in.Keys, k)
		in.Events = append(in.Events, Event{Seq: uint64(i), Time: now, Operation: "key.rotate", Key: k.Name, Result: "ok"})
	}
	for i := range entries {
		in.Entries = append(in.Entries, Entry{ID: fmt.Sprintf("%032x", i), SPIFFEID: fmt.Sprintf("spiffe://prod.example.org/ns/%d/sa/%d", i%300, i), TTL: time.Duration(i%48) * time.Hour})
	}
	return in
}

func BenchmarkReport10kKeys100kEntries(b *testing.B) {
	in := BigInput(10000, 100000)
	b.ResetTimer()
	for b.Loop() {
		r := Build(in)
		var buf bytes.Buffer
		if err := WriteHTML(&buf, r); err != nil {
			b.Fatal(err)
		}
		if err := WriteJSON(&buf, r); err != nil {
			b.Fatal(err)
		}
	}
}
