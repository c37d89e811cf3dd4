package server

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
)

// TestWarnedPolicyInForceIsShown: a version stored in warn mode whose
// permit the lint refuses stays in force when the cluster turns strict;
// from then on /healthz carries a warning line (naming no policy: it
// answers anyone), ward_policy_lint_warnings{mode="strict"} counts the
// permit, the dashboard's health warnings name it, and `PolicyLintMode`
// lists it. Applying a fixed set clears all of them.
func TestWarnedPolicyInForceIsShown(t *testing.T) {
	ctx := context.Background()
	cfg := baseConfig(filepath.Join(t.TempDir(), "a"))
	cfg.HTTPAddress = "127.0.0.1:0"
	srv, c := start(t, cfg)
	if _, err := c.Operator.Init(ctx, &wardv1.InitRequest{}); err != nil {
		t.Fatal(err)
	}
	base := "http://" + srv.HTTPAddress()
	// eventually polls until ok holds (no timing is asserted: the bound
	// only ends a test that would otherwise hang).
	eventually := func(what string, ok func() bool) {
		t.Helper()
		for end := time.Now().Add(20 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("%s: never", what)
			}
		}
	}
	metric := func() string {
		for _, l := range strings.Split(httpBody(t, base+"/metrics"), "\n") {
			if strings.HasPrefix(l, "ward_policy_lint_warnings{") {
				return l
			}
		}
		return ""
	}
	if _, err := c.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: map[string][]byte{"p.cedar": []byte(openPermit)}}); err != nil {
		t.Fatal(err)
	}
	eventually("the warn-mode metric", func() bool { return metric() == `ward_policy_lint_warnings{mode="warn"} 1` })
	if h := httpBody(t, base+"/healthz"); strings.Contains(h, "warning") {
		t.Fatalf("/healthz warns in warn mode:\n%s", h)
	}

	if _, err := c.Policy.SetPolicyLintMode(ctx, &wardv1.SetPolicyLintModeRequest{Mode: "strict"}); err != nil {
		t.Fatal(err)
	}
	var h string
	eventually("the /healthz warning", func() bool {
		h = httpBody(t, base+"/healthz")
		return strings.Contains(h, "warning: policy: version 1, in force, has 1 permit(s)")
	})
	if !strings.HasPrefix(h, "ok\n") || !strings.Contains(h, "ward policy lint-mode") {
		t.Fatalf("/healthz:\n%s", h)
	}
	// The attacker's view: /healthz answers without authentication; it
	// names neither the policy nor its file.
	for _, secret := range []string{"by-path", "p.cedar", "/ns/shop"} {
		if strings.Contains(h, secret) {
			t.Fatalf("/healthz reveals %q to anyone:\n%s", secret, h)
		}
	}
	if m := metric(); m != `ward_policy_lint_warnings{mode="strict"} 1` {
		t.Fatalf("metric under strict: %q", m)
	}
	found := false
	for _, w := range srv.dashboardState(ctx).Health.Warnings {
		found = found || strings.Contains(w, `p.cedar:1:1 (policy "by-path")`)
	}
	if !found {
		t.Fatalf("the dashboard's warnings do not name the permit: %q", srv.dashboardState(ctx).Health.Warnings)
	}
	if r, err := c.Policy.PolicyLintMode(ctx, &wardv1.PolicyLintModeRequest{}); err != nil || r.CurrentVersion != 1 ||
		len(r.CurrentWarnings) != 1 || !strings.Contains(r.CurrentWarnings[0], `(policy "by-path")`) {
		t.Fatalf("PolicyLintMode: %v %v", r, err)
	}

	if _, err := c.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: map[string][]byte{"p.cedar": []byte(fencedPermit)}}); err != nil {
		t.Fatal(err)
	}
	eventually("the warning to clear", func() bool { return !strings.Contains(httpBody(t, base+"/healthz"), "warning") })
	if m := metric(); m != `ward_policy_lint_warnings{mode="strict"} 0` {
		t.Fatalf("metric after the fix: %q", m)
	}
	if ws := srv.dashboardState(ctx).Health.Warnings; len(ws) != 0 {
		t.Fatalf("dashboard warnings after the fix: %q", ws)
	}
}
