package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAgentCommand(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "agent.yaml")
	os.WriteFile(bad, []byte("trust_domain: prod.example.org\nbogus: 1\n"), 0o600)
	missingBundle := filepath.Join(dir, "agent2.yaml")
	os.WriteFile(missingBundle, []byte("trust_domain: prod.example.org\nserver_address: 127.0.0.1:1\ntrust_bundle_path: "+
		filepath.Join(dir, "none.pem")+"\njoin_token: x\nsocket_path: "+filepath.Join(dir, "s.sock")+"\ndata_dir: "+dir+"\n"), 0o600)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no config", []string{"agent"}, "give --config"},
		{"bad config", []string{"agent", "--config", bad}, `unknown field "bogus"`},
		{"missing file", []string{"agent", "--config", filepath.Join(dir, "nope.yaml")}, "no such file"},
		{"missing bundle", []string{"agent", "--config", missingBundle}, "trust_bundle_path"},
		{"stray argument", []string{"agent", "run"}, "unknown command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := NewRoot()
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetErr(&out)
			root.SetArgs(tt.args)
			err := root.Execute()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
	root := NewRoot()
	cmd, _, err := root.Find([]string{"agent", "list"})
	if err != nil || cmd.Name() != "list" {
		t.Fatalf("ward agent list: %v %v", cmd, err)
	}
	if cmd, _, err := root.Find([]string{"agent", "evict"}); err != nil || cmd.Name() != "evict" {
		t.Fatalf("ward agent evict: %v", err)
	}
}
