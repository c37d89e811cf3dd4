package cli

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/authority/server"
	"github.com/wardproject/ward/internal/shared/yamlconf"
)

// devAuthority starts an initialised, unsealed in-process authority and
// returns its admin address.
func devAuthority(t *testing.T, configure ...func(*config.Server)) string {
	t.Helper()
	dir := t.TempDir()
	cfg := &config.Server{TrustDomain: "cli.example.org", DataDir: dir, LogLevel: "warn",
		Seal: config.Seal{Type: "keyfile", KeyFile: filepath.Join(dir, "seal.key")},
		KMS:  config.KMS{RotationCheckInterval: yamlconf.Duration(time.Minute)}}
	cfg.Storage.Backend = "bbolt"
	cfg.Storage.Bbolt.Path = filepath.Join(dir, "ward.db")
	cfg.AdminSocket = filepath.Join(dir, "admin.sock")
	for _, f := range configure {
		f(cfg)
	}
	ctx := context.Background()
	raw, err := server.OpenStore(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	sl, _ := server.OpenSeal(cfg)
	srv, err := server.New(cfg, raw, sl, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop(); raw.Close() })
	if err := srv.DevInit(ctx); err != nil {
		t.Fatal(err)
	}
	return srv.AdminAddress()
}

// identityRoot is the command tree with `ward agent list/evict` present
// whether or not the agent run command (agent.go) already adds them.
func identityRoot() *cobra.Command {
	root := NewRoot()
	var agent *cobra.Command
	for _, c := range root.Commands() {
		if c.Name() == "agent" {
			agent = c
		}
	}
	if agent == nil {
		agent = &cobra.Command{Use: "agent"}
		root.AddCommand(agent)
	}
	for _, c := range agent.Commands() {
		if c.Name() == "list" {
			return root
		}
	}
	agent.AddCommand(agentAdminCommands()...)
	return root
}

func ward(t *testing.T, addr string, args ...string) (string, error) {
	t.Helper()
	root := identityRoot()
	var out, errb bytes.Buffer
	root.SetArgs(append([]string{"--address", addr}, args...))
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetIn(strings.NewReader(""))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestIdentityCLI(t *testing.T) {
	addr := devAuthority(t)
	must := func(args ...string) string {
		t.Helper()
		out, err := ward(t, addr, args...)
		if err != nil {
			t.Fatalf("ward %s: %v", strings.Join(args, " "), err)
		}
		return out
	}
	agent := "spiffe://cli.example.org/ward/agent/node-1"
	out := must("entry", "create", "--spiffe-id", "spiffe://cli.example.org/payments", "--parent", agent,
		"--selector", "unix:uid:1000", "--selector", "unix:sha256:"+strings.Repeat("ab", 32), "--ttl", "30m",
		"--dns", "payments.internal", "--label", "app=payments", "--hint", "primary")
	id := regexp.MustCompile(`Entry ID:\s+([0-9a-f]{32})`).FindStringSubmatch(out)
	if id == nil || !strings.Contains(out, "30m0s") || !strings.Contains(out, "app=payments") {
		t.Fatalf("entry create printed:\n%s", out)
	}
	if out := must("entry", "list"); !strings.Contains(out, id[1]) || !strings.Contains(out, "unix:uid:1000") {
		t.Fatalf("entry list:\n%s", out)
	}
	if out := must("entry", "update", id[1], "--ttl", "1h"); !strings.Contains(out, "1h0m0s") || !strings.Contains(out, "payments.internal") {
		t.Fatalf("update changed more than --ttl:\n%s", out)
	}
	if out := must("entry", "show", id[1], "--json"); !strings.Contains(out, `"ttlSeconds": "3600"`) {
		t.Fatalf("entry show --json:\n%s", out)
	}
	for _, bad := range [][]string{
		{"entry", "create", "--spiffe-id", "spiffe://other.org/x", "--parent", agent, "--selector", "unix:uid:1"},
		{"entry", "create", "--spiffe-id", "spiffe://cli.example.org/x", "--parent", agent, "--selector", "uid1000"},
		{"entry", "create", "--spiffe-id", "spiffe://cli.example.org/x", "--parent", agent},
		{"entry", "show", "nope"},
		{"token", "create", "--ttl", "0s"},
		{"ca", "bundle", "--format", "der"},
		{"ca", "taint", "abc"}, // no terminal, no --yes
	} {
		if _, err := ward(t, addr, bad...); err == nil {
			t.Errorf("ward %s succeeded", strings.Join(bad, " "))
		}
	}
	if out := must("entry", "list"); strings.Count(out, "\n") != 2 {
		t.Fatalf("refused commands changed the entries:\n%s", out)
	}

	tok := strings.TrimSpace(must("token", "create", "--ttl", "10m", "--quiet"))
	if len(tok) != 64 {
		t.Fatalf("token %q", tok)
	}
	if out := must("token", "create", "--agent-path", "rack1/node-9"); !strings.Contains(out, "spiffe://cli.example.org/ward/agent/rack1/node-9") {
		t.Fatalf("token create:\n%s", out)
	}
	if out := must("agent", "list"); !strings.Contains(out, "SPIFFE ID") {
		t.Fatalf("agent list:\n%s", out)
	}
	if _, err := ward(t, addr, "agent", "evict", agent); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("evicting an unknown agent: %v", err)
	}

	show := must("ca", "show")
	inter := regexp.MustCompile(`(?m)^([0-9a-f]{40})\s+intermediate\s+active`).FindStringSubmatch(show)
	if inter == nil {
		t.Fatalf("ca show:\n%s", show)
	}
	must("ca", "rotate")
	if out := must("ca", "rotate", "--root"); strings.Count(out, " root ") < 2 {
		t.Fatalf("ca rotate --root:\n%s", out)
	}
	if out := must("ca", "taint", inter[1], "--yes"); !regexp.MustCompile(inter[1] + `\s+intermediate\s+tainted`).MatchString(out) {
		t.Fatalf("ca taint:\n%s", out)
	}
	pemFile := filepath.Join(t.TempDir(), "bundle.pem")
	must("ca", "bundle", "-o", pemFile)
	b, _ := os.ReadFile(pemFile)
	if strings.Count(string(b), "BEGIN CERTIFICATE") != 2 {
		t.Fatalf("bundle.pem:\n%s", b)
	}
	js := must("ca", "bundle", "--format", "spiffe")
	if _, err := spiffebundle.Parse(spiffeid.RequireTrustDomainFromString("cli.example.org"), []byte(js)); err != nil {
		t.Fatalf("ca bundle --format spiffe is not a SPIFFE bundle: %v\n%s", err, js)
	}
	must("entry", "delete", id[1])
	if _, err := ward(t, addr, "entry", "show", id[1]); err == nil {
		t.Fatal("deleted entry still shown")
	}
}
