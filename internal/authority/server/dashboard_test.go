package server

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/authority/dashboard"
	"github.com/wardproject/ward/internal/shared/yamlconf"
)

func dashConfig(t *testing.T) *config.Server {
	dir := filepath.Join(t.TempDir(), "data")
	cfg := baseConfig(dir)
	cfg.Dashboard = config.Dashboard{Address: "127.0.0.1:0", TokenFile: filepath.Join(dir, "dashboard.token"), RefreshInterval: yamlconf.Duration(100 * time.Millisecond)}
	return cfg
}

// The dashboard of a sealed authority shows it sealed, to its token only;
// without the token the listener answers 401 and nothing else.
func TestDashboardSealedAndToken(t *testing.T) {
	cfg := dashConfig(t)
	srv, _ := start(t, cfg)
	fi, err := os.Stat(srv.DashboardTokenFile())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", fi, err)
	}
	tok, _ := os.ReadFile(srv.DashboardTokenFile())
	base := "http://" + srv.DashboardAddress()
	get := func(tok string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, base+"/api/state", nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(""); code != 401 || strings.Contains(body, "test.example.org") {
		t.Fatalf("without token: %d %s", code, body)
	}
	code, body := get(strings.TrimSpace(string(tok)))
	var st dashboard.State
	if code != 200 || json.Unmarshal([]byte(body), &st) != nil || !st.Health.Sealed || st.TrustDomain != "test.example.org" {
		t.Fatalf("with token: %d %s", code, body)
	}
	// Unsealed: keys appear.
	if err := srv.DevInit(context.Background()); err != nil {
		t.Fatal(err)
	}
	{
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, body = get(strings.TrimSpace(string(tok)))
			json.Unmarshal([]byte(body), &st)
			if !st.Health.Sealed || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if st.Health.Sealed || !st.Health.IdentityActive || len(st.CA.Keys) == 0 {
			t.Fatalf("after unseal: %s", body)
		}
	}
}

// A token file other users can read is refused: the authority does not start.
func TestDashboardTokenFileMode(t *testing.T) {
	cfg := dashConfig(t)
	os.MkdirAll(cfg.DataDir, 0o700)
	os.WriteFile(cfg.Dashboard.TokenFile, []byte(strings.Repeat("a", 40)), 0o644)
	os.Chmod(cfg.Dashboard.TokenFile, 0o644)
	raw, err := OpenStore(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	sl, _ := OpenSeal(cfg)
	srv, err := New(cfg, raw, sl, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	err = srv.Start(context.Background())
	srv.Stop()
	if err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a world-readable token file: %v", err)
	}
	os.WriteFile(cfg.Dashboard.TokenFile, []byte("short"), 0o600)
	os.Chmod(cfg.Dashboard.TokenFile, 0o600)
	srv, _ = New(cfg, raw, sl, slog.New(slog.DiscardHandler))
	err = srv.Start(context.Background())
	srv.Stop()
	if err == nil || !strings.Contains(err.Error(), "at least 32") {
		t.Fatalf("a short token: %v", err)
	}
}
