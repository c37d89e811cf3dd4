// The folder tree under internal/ is the architecture: each top folder is a
// part of ward, and this test holds the rule of who may import whom.
package internal_test

import (
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/wardproject/ward"

// parts: the top folders of internal/ (and the public packages), each with
// the parts its packages may import. A part may always import itself.
var mayImport = map[string][]string{
	"shared":       {"api"},                                                                                     // policy engine, formats, crypto helpers, peer credentials
	"authority":    {"shared", "api"},                                                                           // ward server: CA, KMS, registry, audit, store, Node API
	"node":         {"shared", "api"},                                                                           // ward agent: attestation, Workload API
	"dataplane":    {"shared", "api"},                                                                           // ward proxy, ward gateway
	"integrations": {"shared", "public", "api"},                                                                 // beside other systems' servers (ward kms-plugin beside kube-apiserver): never the authority
	"governance":   {"shared", "api"},                                                                           // measures and grades what runs (ward scan): reads endpoints and the API, never authority internals or the data plane
	"public":       {"shared", "api"},                                                                           // envelope, client: what users import
	"cli":          {"authority", "node", "dataplane", "integrations", "governance", "shared", "public", "api"}, // the command tree wires every part
	"cmd":          {"cli"},
	"testutil":     {"authority", "node", "dataplane", "integrations", "governance", "shared", "public", "api"}, // fixtures for tests only
	"api":          {},
}

// partOf names the part a package path of this module belongs to.
func partOf(pkg string) (string, bool) {
	rel, ok := strings.CutPrefix(pkg, module+"/")
	if !ok {
		return "", false
	}
	top, rest, _ := strings.Cut(rel, "/")
	switch top {
	case "internal":
		p, _, _ := strings.Cut(rest, "/")
		if _, known := mayImport[p]; known && p != "public" && p != "cmd" && p != "api" {
			return p, true
		}
		return "internal/" + p, true // an unknown folder: reported by checkImport
	case "envelope", "client":
		return "public", true
	case "cmd":
		return "cmd", true
	case "api":
		return "api", true
	case "bench", "test":
		return "testutil", true
	}
	return top, true
}

// checkImport says why pkg may not import imp, or nil.
func checkImport(pkg, imp string) error {
	from, ok := partOf(pkg)
	if !ok {
		return nil
	}
	to, ok := partOf(imp)
	if !ok {
		return nil // outside the module
	}
	allowed, known := mayImport[from]
	if !known {
		return fmt.Errorf("%s is in %s, which is no part of ward's layout: put it under internal/{authority,node,dataplane,integrations,governance,shared,cli,testutil} (docs/architecture.md)", pkg, from)
	}
	if _, known := mayImport[to]; !known {
		return fmt.Errorf("%s imports %s, which is in %s, no part of ward's layout (docs/architecture.md)", pkg, imp, to)
	}
	if from == to {
		return nil
	}
	for _, a := range allowed {
		if a == to {
			return nil
		}
	}
	return fmt.Errorf("%s (%s) imports %s (%s): %s may import only %v (docs/architecture.md)", pkg, from, imp, to, from, allowed)
}

type listed struct {
	ImportPath string
	Imports    []string
	Deps       []string
}

func goList(t *testing.T, args ...string) []listed {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-json=ImportPath,Imports,Deps"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Skipf("go list: %v (needs the go tool)", err)
	}
	var pkgs []listed
	dec := json.NewDecoder(out)
	for {
		var p listed
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("go list %v: %v\n%s", args, err, stderr.String())
	}
	return pkgs
}

// TestImportRule: no package imports a part it may not (non-test code).
func TestImportRule(t *testing.T) {
	var bad []string
	for _, p := range goList(t, module+"/...") {
		for _, imp := range p.Imports {
			if err := checkImport(p.ImportPath, imp); err != nil {
				bad = append(bad, err.Error())
			}
		}
	}
	sort.Strings(bad)
	for _, b := range bad {
		t.Error(b)
	}
}

// TestNodeAndDataPlaneLinkNoAuthority: what runs on a node (agent) and in
// the data plane (proxy) does not even indirectly link the authority's CA,
// KMS, registry, audit log, barrier, seal or store.
func TestNodeAndDataPlaneLinkNoAuthority(t *testing.T) {
	for _, p := range goList(t, "-deps=false", module+"/internal/node/...", module+"/internal/dataplane/...") {
		for _, d := range p.Deps {
			if part, _ := partOf(d); part == "authority" {
				t.Errorf("%s links %s (an authority package): move what both sides need under internal/shared", p.ImportPath, d)
			}
		}
	}
}

// TestCheckImport: the rule itself, including the violations it must catch.
func TestCheckImport(t *testing.T) {
	in := module + "/internal/"
	for _, tc := range []struct {
		pkg, imp string
		ok       bool
	}{
		{in + "node/agent", in + "shared/policy", true},
		{in + "node/agent", in + "authority/ca", false},
		{in + "node/agent", in + "authority/store", false},
		{in + "dataplane/proxy", in + "authority/kms", false},
		{in + "dataplane/proxy", in + "node/agent", false},
		{in + "dataplane/proxy", in + "shared/keyutil", true},
		{in + "authority/server", in + "node/workloadapi", false},
		{in + "authority/server", in + "authority/kms", true},
		{in + "shared/policy", in + "authority/policystore", false},
		{in + "shared/policy", module + "/api/ward/v1", true},
		{module + "/envelope", in + "shared/kmscrypto", true},
		{module + "/envelope", in + "authority/kms", false},
		{in + "cli", in + "authority/server", true},
		{in + "cli", in + "testutil/proxytest", false},
		{in + "authority/kms", in + "testutil/etcdtest", false},
		{in + "misc", in + "shared/policy", false},
		{in + "node/agent", "github.com/spiffe/go-spiffe/v2/spiffeid", true},
		{in + "governance/scan", in + "shared/keyutil", true},
		{in + "governance/scan", in + "authority/ca", false},
		{in + "governance/scan", in + "dataplane/proxy", false},
		{in + "governance/scan", in + "node/agent", false},
		{in + "cli", in + "governance/scan", true},
		{in + "dataplane/proxy", in + "governance/scan", false},
	} {
		err := checkImport(tc.pkg, tc.imp)
		if (err == nil) != tc.ok {
			t.Errorf("checkImport(%s, %s) = %v, want ok=%v", tc.pkg, tc.imp, err, tc.ok)
		}
	}
}
