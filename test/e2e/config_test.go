package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestConfigRejectedBeforeAnythingIsCreated starts `ward server` from a
// scratch working directory with configs that used to be accepted late or
// half-applied (a relative data_dir, malformed listen addresses): each is
// refused with an error naming the field, and the working directory and
// the data directory stay empty.
func TestConfigRejectedBeforeAnythingIsCreated(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"relative data_dir", "data_dir: ward-data\n", "data_dir \"ward-data\" is a relative path"},
		{"relative bbolt path", "data_dir: DATA\nstorage: {bbolt: {path: ward.db}}\n", "storage.bbolt.path"},
		{"http_address without port", "data_dir: DATA\nhttp_address: localhost\n", "http_address"},
		{"http_address bad port", "data_dir: DATA\nhttp_address: 127.0.0.1:99999\n", "http_address"},
		{"http_address with scheme", "data_dir: DATA\nhttp_address: http://127.0.0.1:9090\n", "http_address"},
		{"node_api_address bad port", "data_dir: DATA\nidentity: {node_api_address: '127.0.0.1:http'}\n", "identity.node_api_address"},
		{"same port twice", "data_dir: DATA\nhttp_address: 127.0.0.1:18443\nidentity: {node_api_address: '0.0.0.0:18443'}\n", "same port"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cwd, cfgDir := t.TempDir(), t.TempDir()
			data := filepath.Join(t.TempDir(), "data")
			p := filepath.Join(cfgDir, "ward.yaml")
			os.WriteFile(p, []byte("trust_domain: a.org\n"+strings.ReplaceAll(c.yaml, "DATA", data)), 0o600)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, WardBin, "server", "--config", p)
			cmd.Dir = cwd
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			if err == nil || !strings.Contains(stderr.String(), c.want) {
				t.Fatalf("exit %v, stderr %q; want it to mention %q", err, stderr.String(), c.want)
			}
			if ents, _ := os.ReadDir(cwd); len(ents) != 0 {
				t.Fatalf("a rejected config created %v in the working directory", ents)
			}
			if _, err := os.Stat(data); err == nil {
				t.Fatal("a rejected config still created the data directory")
			}
		})
	}
}
