package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/authority/dashboard"
	"github.com/wardproject/ward/internal/authority/server"
	"github.com/wardproject/ward/internal/governance/drift"
	"github.com/wardproject/ward/internal/shared/yamlconf"
)

// chromiumPath finds Debian's chromium. Without it the test is skipped on
// a developer machine and fails under CI=true (scripts/test.sh installs it).
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium is not installed (apt-get install chromium; scripts/test.sh does): the dashboard test needs it under CI")
	}
	t.Skip("chromium is not installed (apt-get install chromium)")
	return ""
}

// artifactDir is where screenshots are kept: $WARD_TEST_ARTIFACTS/<name>,
// else the test's temporary directory.
func artifactDir(t *testing.T, name string) string {
	dir := t.TempDir()
	if a := os.Getenv("WARD_TEST_ARTIFACTS"); a != "" {
		dir = filepath.Join(a, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestDashboardInChromium logs in to a real authority's dashboard with
// headless Chromium, renders every page with no console error, sees a key
// rotation and a revocation made with the CLI appear within seconds, and
// keeps a screenshot of each page.
func TestDashboardInChromium(t *testing.T) {
	chrome := chromiumPath(t)
	dir := t.TempDir()
	cfg := &config.Server{TrustDomain: "dash.example.org", DataDir: dir, LogLevel: "warn",
		Seal:      config.Seal{Type: "keyfile", KeyFile: filepath.Join(dir, "seal.key")},
		KMS:       config.KMS{RotationCheckInterval: yamlconf.Duration(time.Minute)},
		Dashboard: config.Dashboard{Address: "127.0.0.1:0", TokenFile: filepath.Join(dir, "dashboard.token"), RefreshInterval: yamlconf.Duration(200 * time.Millisecond)}}
	cfg.Storage.Backend = "bbolt"
	cfg.Storage.Bbolt.Path = filepath.Join(dir, "ward.db")
	cfg.AdminSocket = filepath.Join(dir, "admin.sock")
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	raw, err := server.OpenStore(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	sl, _ := server.OpenSeal(cfg)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := server.New(cfg, raw, sl, logger)
	if err != nil {
		t.Fatal(err)
	}
	srv.SetDriftEvaluator(drift.Evaluate, 0) // as runServer wires it
	stopAnomaly, err := wireAnomaly(srv, cfg.Anomaly, logger)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop(); stopAnomaly(); raw.Close() })
	if err := srv.DevInit(ctx); err != nil {
		t.Fatal(err)
	}
	addr := srv.AdminAddress()
	must := func(args ...string) {
		t.Helper()
		if out, err := ward(t, addr, args...); err != nil {
			t.Fatalf("ward %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	must("key", "create", "tenant-a/payments", "--classification", "confidential")
	must("key", "create", "tenant-b/ledger", "--classification", "restricted")
	pol := filepath.Join(dir, "p.cedar")
	os.WriteFile(pol, []byte(`permit(principal, action, resource);`), 0o600)
	// A comment is free text from the operator: it must render as text.
	must("policy", "apply", pol, "--message", `<img src=x onerror="window.__xss=1">first`)
	// A declared posture the registered entry breaks: one drift finding.
	must("entry", "create", "--spiffe-id", "spiffe://dash.example.org/payments", "--parent", "spiffe://dash.example.org/ward/agent/node-1",
		"--selector", "unix:uid:1000", "--ttl", "2h")
	c, err := client.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Posture.SetPosture(ctx, &wardv1.SetPostureRequest{File: []byte("defaults:\n  max_svid_ttl: 1h\n")}); err != nil {
		t.Fatal(err)
	}
	tok, err := os.ReadFile(srv.DashboardTokenFile())
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(srv.DashboardTokenFile()); fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %v", fi.Mode().Perm())
	}
	base := "http://" + srv.DashboardAddress()
	// Without the token: 401.
	if resp, err := http.Get(base + "/api/state"); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unauthenticated state: %v %v", resp, err)
	}

	shots := artifactDir(t, "dashboard")
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chrome), chromedp.NoSandbox,
		chromedp.UserDataDir(filepath.Join(dir, "chrome")), chromedp.WindowSize(1360, 900), chromedp.Flag("disable-gpu", true))
	actx, cancelA := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelA()
	var mu sync.Mutex
	var problems []string
	recording := false
	bctx, cancelB := chromedp.NewContext(actx, chromedp.WithListener(func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		if !recording {
			return
		}
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeWarning {
				var args []string
				for _, a := range ev.Args {
					args = append(args, string(a.Value)+a.Description)
				}
				problems = append(problems, fmt.Sprintf("console.%s: %s", ev.Type, strings.Join(args, " ")))
			}
		case *runtime.EventExceptionThrown:
			problems = append(problems, fmt.Sprintf("exception: %s at %s:%d", ev.ExceptionDetails.Text, ev.ExceptionDetails.URL, ev.ExceptionDetails.LineNumber))
		case *log.EventEntryAdded:
			if ev.Entry.Level == log.EntryLevelError || ev.Entry.Level == log.EntryLevelWarning {
				problems = append(problems, fmt.Sprintf("log %s (%s): %s %s", ev.Entry.Level, ev.Entry.Source, ev.Entry.Text, ev.Entry.URL))
			}
		}
	}))
	defer cancelB()
	run := func(what string, a chromedp.Action[chromedp.Void]) {
		t.Helper()
		c, cancel := context.WithTimeout(bctx, 90*time.Second)
		defer cancel()
		if _, err := chromedp.Run(c, a); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	// The browser starts with the first Run (not under a timeout: that would end it).
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/")); err != nil {
		t.Fatal(err)
	}
	run("login", chromedp.Steps(
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), strings.TrimSpace(string(tok))),
		chromedp.Click(chromedp.CSS("#login")),
		chromedp.WaitVisible(chromedp.CSS("main[data-generated]")),
	))
	mu.Lock()
	recording = true
	mu.Unlock()
	shot := func(name string) {
		t.Helper()
		c, cancel := context.WithTimeout(bctx, 90*time.Second)
		defer cancel()
		buf, err := chromedp.Run(c, chromedp.FullScreenshot(100)) // 100: PNG (lower is JPEG)
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(shots, name+".png"), buf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	waitFor := func(what, js string) {
		t.Helper()
		// Generous bounds: a loaded 2-core CI runs chromium next to -race
		// builds; the time it took is logged, never asserted.
		c, cancel := context.WithTimeout(bctx, 90*time.Second)
		defer cancel()
		start := time.Now()
		if _, err := chromedp.Run(c, chromedp.Poll[bool](js, chromedp.WithPollingTimeout(75*time.Second))); err != nil {
			t.Fatalf("%s did not appear within 75 s: %v", what, err)
		}
		t.Logf("%s appeared after %v", what, time.Since(start).Round(time.Millisecond))
	}
	for _, p := range dashboard.Pages {
		run("open "+p.Path, chromedp.Steps(chromedp.Navigate(base+p.Path), chromedp.WaitVisible(chromedp.CSS("main[data-generated]"))))
		waitFor(p.Name+" rendered", `document.querySelector("main h2, main .cards") !== null`)
		switch p.Name {
		case "keys":
			waitFor("the keys", `document.querySelector("#keys").textContent.includes("tenant-b/ledger")`)
			must("key", "rotate", "tenant-a/payments")
			waitFor("the rotation (tenant-a/payments v2)", `[...document.querySelectorAll("#keys tr")].some(r => r.textContent.includes("tenant-a/payments") && r.textContent.includes("v2"))`)
		case "policy":
			waitFor("the policy version", `document.querySelector("#versions").textContent.includes("first")`)
			must("revoke", "--spiffe-id", "spiffe://dash.example.org/stolen")
			waitFor("the revocation", `document.querySelector("#denylist").textContent.includes("spiffe://dash.example.org/stolen")`)
		case "governance":
			waitFor("the drift finding", `document.querySelector("#drift") !== null && document.querySelector("#drift").textContent.includes("max_ttl")`)
		}
		shot(p.Name)
	}
	var xss bool
	cx, cancel := context.WithTimeout(bctx, 60*time.Second)
	xss, err = chromedp.Run(cx, chromedp.Evaluate[bool](`window.__xss === 1 || document.querySelector("main img") !== null`))
	cancel()
	if err != nil || xss {
		t.Errorf("the policy comment ran as markup (xss %v, err %v)", xss, err)
	}
	// ward report reads the same drift evaluation.
	out, err := ward(t, addr, "report", "--format", "json", "--no-verify")
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Drift struct {
			Configured bool
			Findings   []struct{ Rule, Object string }
		}
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || !rep.Drift.Configured || len(rep.Drift.Findings) != 1 || rep.Drift.Findings[0].Rule != "svid.max_ttl" {
		t.Errorf("report drift: %v %+v", err, rep.Drift)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, p := range problems {
		t.Errorf("browser: %s", p)
	}
	t.Logf("screenshots in %s", shots)
}
