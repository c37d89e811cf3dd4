package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/wardproject/ward/internal/shared/policy"
)

// repoRoot is the repository's top directory (this package is internal/cli).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// wardIn runs `ward args...` in process, in dir, and returns stdout.
func wardIn(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	t.Chdir(dir)
	root := NewRoot()
	var out, errb bytes.Buffer
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetIn(strings.NewReader(""))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// TestExamplesPassTheirOwnCheck: every configuration under examples/ is
// accepted by the `--check` of the command that reads it, and every
// policy file compiles and decides as its comments say, so the examples
// the docs point at cannot drift from the code.
func TestExamplesPassTheirOwnCheck(t *testing.T) {
	root := repoRoot(t)
	ymls, err := filepath.Glob(filepath.Join(root, "examples", "*.yaml"))
	if err != nil || len(ymls) == 0 {
		t.Fatalf("no examples/*.yaml: %v", err)
	}
	for _, path := range ymls {
		name := filepath.Base(path)
		var cmd string
		switch {
		case strings.HasPrefix(name, "ward"):
			cmd = "server"
		case strings.HasPrefix(name, "agent"):
			cmd = "agent"
		case strings.HasPrefix(name, "proxy"):
			cmd = "proxy"
		case strings.HasPrefix(name, "gateway"):
			cmd = "gateway"
		case strings.HasPrefix(name, "webhook"):
			cmd = "webhook"
		default:
			t.Errorf("examples/%s: no command reads it (name it ward*, agent*, proxy*, gateway* or webhook*)", name)
			continue
		}
		t.Run(name, func(t *testing.T) {
			out, err := wardIn(t, root, cmd, "--config", filepath.Join("examples", name), "--check")
			if err != nil || !strings.Contains(out, "valid") {
				t.Fatalf("ward %s --config examples/%s --check: %v\n%s", cmd, name, err, out)
			}
		})
	}
	for _, want := range []string{"ward.yaml", "agent.yaml", "proxy-inbound.yaml", "proxy-outbound.yaml", "gateway.yaml", "webhook.yaml"} {
		if _, err := os.Stat(filepath.Join(root, "examples", want)); err != nil {
			t.Errorf("examples/%s is missing: %v", want, err)
		}
	}

	// The example policies lint clean, even under --strict.
	if out, err := wardIn(t, root, "policy", "lint", "--strict", "examples/policies/"); err != nil || !strings.Contains(out, " 0 warning(s)") {
		t.Errorf("ward policy lint --strict examples/policies/: %v\n%s", err, out)
	}

	type decision struct {
		args  []string
		allow bool
	}
	for _, d := range []decision{
		{[]string{"--principal", "spiffe://prod-eu.example.org/ns/shop/web", "--action", "connect", "--resource", "service:api:8443", "--classification", "internal"}, true},
		{[]string{"--principal", "spiffe://prod-eu.example.org/ns/ops/tool", "--action", "connect", "--resource", "service:api:8443", "--classification", "internal"}, false},
		{[]string{"--principal", "spiffe://prod-eu.example.org/ns/shop/cart", "--label", "team=shop", "--action", "connect", "--resource", "service:orders", "--classification", "internal"}, true},
		{[]string{"--principal", "spiffe://other.example.org/ns/shop/cart", "--label", "team=shop", "--action", "connect", "--resource", "service:vault", "--classification", "restricted"}, false},
		{[]string{"--principal", "spiffe://prod-eu.example.org/ns/shop/api", "--action", "kms:encrypt", "--resource", "key:shop/orders", "--classification", "confidential"}, true},
		{[]string{"--principal", "spiffe://prod-eu.example.org/ns/shop/api", "--action", "kms:decrypt", "--resource", "key:shop/cards", "--classification", "restricted"}, false},
		{[]string{"--principal", "spiffe://prod-eu.example.org/ns/shop/api", "--label", "pci=true", "--action", "kms:decrypt", "--resource", "key:shop/cards", "--classification", "restricted"}, true},
		{[]string{"--principal", "spiffe://prod-eu.example.org/ns/shop/batch", "--action", "kms:datakey", "--resource", "key:shop/orders", "--classification", "confidential"}, true},
		{[]string{"--principal", "spiffe://prod-eu.example.org/ns/shop/batch", "--action", "kms:decrypt", "--resource", "key:shop/orders", "--classification", "confidential"}, false},
	} {
		args := append([]string{"policy", "test", "-f", "examples/policies/"}, d.args...)
		out, err := wardIn(t, root, args...)
		var ee *exitError
		switch {
		case d.allow && (err != nil || !strings.HasPrefix(out, "ALLOW")):
			t.Errorf("ward %s: want ALLOW, got %v\n%s", strings.Join(args, " "), err, out)
		case !d.allow && (!errors.As(err, &ee) || ee.code != 3 || !strings.HasPrefix(out, "DENY")):
			t.Errorf("ward %s: want DENY (exit 3), got %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestPolicyDocCompiles: every ```cedar block of docs/policy.md compiles,
// on its own and all together (ids are unique across the page).
func TestPolicyDocCompiles(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "policy.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```cedar\n(.*?)```").FindAllSubmatch(b, -1)
	if len(blocks) < 5 {
		t.Fatalf("docs/policy.md has %d cedar blocks, want the five worked policies", len(blocks))
	}
	all := map[string][]byte{}
	for i, m := range blocks {
		name := "policy.md#" + string(rune('1'+i))
		if set, err := policy.Compile(map[string][]byte{name: m[1]}); err != nil {
			t.Errorf("docs/policy.md block %d does not compile: %v\n%s", i+1, err, m[1])
		} else if ws := set.Warnings(); len(ws) > 0 && !strings.Contains(string(m[1]), "lint: warns") {
			t.Errorf("docs/policy.md block %d has warnings (mark a block meant to warn with a `// lint: warns` comment): %v", i+1, ws)
		}
		all[name] = m[1]
	}
	if _, err := policy.Compile(all); err != nil {
		t.Errorf("docs/policy.md blocks do not compile together: %v", err)
	}
}

// TestProxyCheckRefusesMissingPolicyFiles: `ward proxy --check` reads the
// policy files it names, as the proxy will at start.
func TestProxyCheckRefusesMissingPolicyFiles(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "proxy.yaml")
	os.WriteFile(cfg, []byte(`workload_api_socket: unix:///run/ward/agent.sock
policy_files: [/nonexistent]
inbound:
  - name: api
    listen: 127.0.0.1:8443
    forward: 127.0.0.1:8080
`), 0o600)
	out, err := wardIn(t, dir, "proxy", "--config", cfg, "--check")
	if err == nil || !strings.Contains(err.Error(), "/nonexistent") || !strings.Contains(err.Error(), "proxy.yaml") {
		t.Fatalf("--check with a missing policy file: %v\n%s", err, out)
	}
}
