package policy

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func FuzzCompile(f *testing.F) {
	f.Add([]byte(shopPolicy))
	f.Add([]byte(`permit(principal, action, resource) when { context.tls_version == "1.3" };`))
	f.Add([]byte(`@id("x") @dryrun("true") forbid(principal in Group::"g", action in [Action::"connect"], resource is Key in Key::"k") unless { if true then false else 1 };`))
	f.Add([]byte(`permit(principal, action, resource) when { "\u{1F600}" like "*\*" && [1,{a:2}].contains(ip("10.0.0.1")) };`))
	f.Add([]byte("permit(principal,\n action resource)"))
	f.Add([]byte(`permit(principal is Workload in TrustDomain::"a", action, resource) when { context.unix_time > 5 && !(resource.name like "a*") || principal.labels.x != resource.port } unless { action in Action::"kms" };`))
	f.Add([]byte(`forbid(principal, action, resource) when { -9223372036854775808 < 99999999999999999999 };`))
	f.Add([]byte(`permit(principal, action, resource) when { if principal.trust_domain == "a" then principal.path == "/x" else false } unless { principal.trust_domain != "b" && !(principal in [TrustDomain::"c"]) };`))
	f.Add([]byte(`permit(principal, action, resource) when { ["a", "b"].contains(context.source_trust_domain) || principal.trust_domain like "c" };`))
	f.Fuzz(func(t *testing.T, src []byte) {
		s, err := Compile(map[string][]byte{"f.cedar": src})
		if err != nil {
			if s != nil {
				t.Fatal("both a Set and an error")
			}
			var ce *CompileError
			if !errors.As(err, &ce) || len(ce.Problems) == 0 {
				t.Fatalf("error is not a CompileError with problems: %v", err)
			}
			for _, p := range ce.Problems {
				if p.File != "f.cedar" || p.Message == "" || p.Line < 0 || p.Column < 0 {
					t.Fatalf("bad problem %+v", p)
				}
			}
			return
		}
		for _, w := range s.Warnings() {
			if !w.Warning || w.Kind != KindFederation || w.File != "f.cedar" || w.Line <= 0 || w.Policy == "" {
				t.Fatalf("bad warning %+v", w)
			}
		}
		// The federation check is sound: with no warning and no
		// @federated, no permit admits a trust domain the source never
		// names, whatever the path and labels.
		if len(s.Warnings()) == 0 && !bytes.Contains(src, []byte("federated")) && !bytes.Contains(src, []byte("fuzz-peer")) {
			for _, req := range []Request{connect(web, "api"), kms(api, ActionKMSDecrypt, "k")} {
				req.Principal = strings.Replace(req.Principal, "prod.example", "fuzz-peer.example", 1)
				req.Labels = map[string]string{"team": "shop", "x": "1"}
				if d := s.Decide(req); d.Allowed {
					t.Fatalf("no federation warning, yet %s is allowed: %+v", req.Principal, d)
				}
			}
		}
		// Whatever compiled must decide identically with and without the index.
		for _, req := range []Request{connect(web, "api"), kms(api, ActionKMSDecrypt, "k")} {
			if got, want := s.Decide(req), s.decide(&req, true); !reflect.DeepEqual(got, want) {
				t.Fatalf("indexed %+v != unindexed %+v", got, want)
			}
			_ = s.Explain(req)
		}
	})
}

func FuzzParseBundle(f *testing.F) {
	raw, _ := MarshalBundle(Bundle{Version: 3, Files: map[string][]byte{"a": []byte(shopPolicy)}, DenyList: DenyList{SPIFFEIDs: []string{web}, Serials: []string{"0a"}}})
	f.Add(raw)
	f.Add([]byte(`{"version":1,"files":{},"deny_list":{"serials":["zz"]}}`))
	f.Add([]byte(`{"version":-1}`))
	f.Add([]byte(`{"version":1,"files":{},"deny_list":{"tainted_keys":["00112233445566778899AABBCCDDEEFF00112233","x"]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := ParseBundle(data)
		if err != nil {
			return
		}
		again, err := MarshalBundle(b)
		if err != nil {
			t.Fatal(err)
		}
		b2, err := ParseBundle(again)
		if err != nil || !reflect.DeepEqual(b, b2) {
			t.Fatalf("round trip: %v", err)
		}
		if s, err := CompileBundle(b); err == nil && s.Version() != b.Version {
			t.Fatal("version lost")
		}
	})
}
