package server

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/authority/dashboard"
	"github.com/wardproject/ward/internal/shared/yamlconf"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
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

// TestDashboardTokenFileWatch runs the token file's watch loop against a
// handler: a rotated token ends the old one's access and lets the new one
// in; a file turned readable by others (or removed and unreadable) refuses
// every token, logged, until it is fixed; the loop ends with its context.
func TestDashboardTokenFileWatch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "dashboard.token")
	tokA, tokB := strings.Repeat("a", 64), strings.Repeat("b", 64)
	if err := os.WriteFile(path, []byte(tokA+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h, err := dashboard.New(dashboard.Options{Token: tokA, State: func(context.Context) dashboard.State { return dashboard.State{TrustDomain: "t.example"} },
		Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	var logs syncbuf.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchDashboardToken(ctx, path, h, slog.New(slog.NewTextHandler(&logs, nil)), 5*time.Millisecond)
	}()
	defer func() { cancel(); <-done }()
	code := func(tok string) int {
		req := httptest.NewRequest(http.MethodGet, "http://127.0.0.1/api/state", nil)
		req.RemoteAddr = "127.0.0.1:40000"
		req.Header.Set("Authorization", "Bearer "+tok)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("the watch loop never got to: %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if code(tokA) != 200 || code(tokB) != 401 {
		t.Fatalf("before any change: A %d, B %d", code(tokA), code(tokB))
	}
	// Rotated: the new token in, the old one out.
	if err := os.WriteFile(path, []byte(tokB+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor("token B accepted", func() bool { return code(tokB) == 200 })
	if code(tokA) != 401 {
		t.Fatal("the old token still opens the dashboard after the file changed")
	}
	// Readable by others: every login refused, and logged.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor("token B refused while the file is readable by others", func() bool { return code(tokB) == 401 })
	waitFor("the log line", func() bool { return strings.Contains(logs.String(), "refusing every dashboard login") })
	if code(tokA) != 401 || code("") != 401 {
		t.Fatal("a token was accepted while the token file was unsafe")
	}
	// Fixed: the file's token works again.
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor("token B accepted again", func() bool { return code(tokB) == 200 })
	cancel()
	<-done
	// The loop has ended: a change to the file changes nothing.
	if err := os.WriteFile(path, []byte(tokA+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond)
	if code(tokB) != 200 {
		t.Fatal("the token changed after the watch loop's context ended")
	}
}
