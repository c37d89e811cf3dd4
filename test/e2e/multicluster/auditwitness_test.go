package multicluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/test/e2e"

	"github.com/wardproject/ward/internal/authority/store/boltstore"
	"github.com/wardproject/ward/internal/testutil/netns"
)

// TestAuditRollbackDetectedByWitness: two federated clusters witness each
// other's audit logs. B cosigns A's checkpoints and A receives those
// cosignatures (`ward audit verify` in A lists them). Then A's audit log
// is rolled back in its raw storage the way the red team did it
// (TestAuditTruncationWithOldHeadIsCaught: tail deleted, an old head put
// back). B's witness raises an alert that every channel reports — the
// refresh fails, federation show/list, /healthz, the metric, B's audit
// log — and that stays through more rounds and a restart of B; A's own
// `ward audit verify`, even without any local memory, fails because B
// cosigned more than A's log now holds, and A's next round with B raises
// the alert about its own log.
func TestAuditRollbackDetectedByWitness(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two authorities")
	}
	a := startClusterIn(t, nil, "a.example", "  witness_interval: 1s\n")
	b := startClusterIn(t, nil, "b.example", "  witness_interval: 1s\n")
	auditRollbackWitnessed(t, a, b, func(c *cluster, path string) string { return e2e.HTTPGet(t, c.s, path) })
}

// TestAuditRollbackDetectedByWitnessAcrossNetworkNamespaces is scenario 6:
// the same attack with each cluster in its own network namespace, the
// witness crossing the veth links. Root only; skipped otherwise.
func TestAuditRollbackDetectedByWitnessAcrossNetworkNamespaces(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two clusters in network namespaces")
	}
	nw := netns.New(t)
	na, nb := nw.AddNode("a"), nw.AddNode("b")
	a := startClusterIn(t, na, "a.example", "  witness_interval: 1s\n")
	b := startClusterIn(t, nb, "b.example", "  witness_interval: 1s\n")
	auditRollbackWitnessed(t, a, b, func(c *cluster, path string) string {
		// The HTTP listener is on loopback inside the cluster's namespace.
		if _, err := exec.LookPath("curl"); err != nil {
			t.Logf("no curl: %s of %s not checked inside its namespace", path, c.td)
			return ""
		}
		out, err := c.ns.Run("curl", "-sS", "--max-time", "10", "http://"+e2e.HTTPAddr(t, c.s)+path)
		if err != nil {
			t.Fatalf("curl %s in the namespace of %s: %v\n%s", path, c.td, err, out)
		}
		return out
	})
}

func auditRollbackWitnessed(t *testing.T, a, b *cluster, httpOf func(c *cluster, path string) string) {
	t.Helper()
	b.ward(t, "federation", "add", "a.example", "--endpoint", a.bundleURL, "--bundle", filepath.Join(a.pub, "a.example.json"))
	a.ward(t, "federation", "add", "b.example", "--endpoint", b.bundleURL, "--bundle", filepath.Join(b.pub, "b.example.json"))

	// The attacker's copy of A's audit head, taken at rest.
	a.s.Stop()
	ctx := context.Background()
	dbPath := filepath.Join(a.s.Dir, "ward.db")
	st, err := boltstore.Open(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	oldHead, err := st.Get(ctx, "audit/head")
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	a.s.Start()
	a.s.Unseal(a.shares[:3])

	// A's log grows; B witnesses it (the refresh witnesses at once, the
	// 1s rounds would too), then A witnesses B and picks up B's
	// cosignature of its log.
	a.ward(t, "key", "create", "k", "--classification", "internal")
	for i := range 10 {
		e2e.MustWard(t, a.s.Addr, fmt.Sprint(i), "kms", "encrypt", "--key", "k")
	}
	head := auditSize(t, a)
	b.ward(t, "federation", "refresh", "a.example")
	sb := fedWitness(t, b, "a.example")
	witnessed, _ := strconv.ParseUint(sb.WitnessedSize, 10, 64)
	if witnessed < head || sb.WitnessKeyID == "" || sb.WitnessAlert != nil {
		t.Fatalf("B witnessed A at %+v, A's log had %d events", sb, head)
	}
	verify := waitVerifyWitnessed(t, a, "b.example", witnessed)
	t.Logf("ward audit verify in A:\n%s", verify)
	if show := b.ward(t, "federation", "show", "a.example"); !strings.Contains(show, "Audit witness:") || !strings.Contains(show, "its audit log at") {
		t.Fatalf("federation show in B:\n%s", show)
	}
	if show := a.ward(t, "federation", "show", "b.example"); !strings.Contains(show, "Witnessed by it:") {
		t.Fatalf("federation show in A lacks B's cosignature:\n%s", show)
	}

	// The attack: A's audit tail deleted and the old head put back,
	// bypassing the barrier, while A is down. (B kept witnessing A's
	// growing log every second until then.)
	a.s.Stop()
	final := fedWitness(t, b, "a.example").WitnessedSize
	st, err = boltstore.Open(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	events, err := st.List(ctx, "audit/e/")
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range events {
		if kv.Revision > oldHead.Revision {
			if err := st.Delete(ctx, kv.Key); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := st.Put(ctx, "audit/head", oldHead.Value); err != nil {
		t.Fatal(err)
	}
	st.Close()
	a.s.Start()
	a.s.Unseal(a.shares[1:4])
	// Without memory the rolled-back log verifies on its own records.
	if after := auditSize(t, a); after >= witnessed {
		t.Fatalf("precondition: the rolled-back log has %d events, B witnessed %d", after, witnessed)
	}

	// B's witness catches it: the refresh fails with the alert.
	r := e2e.Ward(t, b.s.Addr, "", "federation", "refresh", "a.example")
	if r.Code == 0 || !strings.Contains(r.Stderr, "AUDIT WITNESS ALERT for a.example") {
		t.Fatalf("refresh in B after A's rollback: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	t.Logf("B: %s", strings.TrimSpace(r.Stderr))
	sb = fedWitness(t, b, "a.example")
	if sb.WitnessAlert == nil || sb.WitnessAlert.Reason != "went_backwards" {
		t.Fatalf("B's witness state after A's rollback: %+v", sb)
	}
	checkAlert := func(when string) {
		t.Helper()
		sb := fedWitness(t, b, "a.example")
		if sb.WitnessAlert == nil || sb.WitnessAlert.Reason != "went_backwards" || sb.WitnessedSize != final {
			t.Fatalf("%s: B's witness state %+v", when, sb)
		}
		if show := b.ward(t, "federation", "show", "a.example"); !strings.Contains(show, "AUDIT WITNESS ALERT:") {
			t.Fatalf("%s: federation show in B:\n%s", when, show)
		}
		if list := b.ward(t, "federation", "list"); !strings.Contains(list, "AUDIT WITNESS ALERT (went_backwards)") {
			t.Fatalf("%s: federation list in B:\n%s", when, list)
		}
		if h := httpOf(b, "/healthz"); h != "" && !strings.Contains(h, "warning: federation: AUDIT WITNESS ALERT for a.example") {
			t.Fatalf("%s: /healthz of B:\n%s", when, h)
		}
		if m := httpOf(b, "/metrics"); m != "" && !strings.Contains(m, `ward_federation_witness_alert{reason="went_backwards",trust_domain="a.example"} 1`) {
			t.Fatalf("%s: /metrics of B lack the alert:\n%s", when, e2e.GrepLines(m, "ward_federation_witness"))
		}
	}
	checkAlert("at once")
	if tail := b.ward(t, "audit", "tail", "-n", "100"); !regexp.MustCompile(`federation\.witness.*error`).MatchString(tail) {
		t.Fatalf("B's audit log lacks the alert:\n%s", tail)
	}
	if !strings.Contains(b.s.Logs.String(), "AUDIT WITNESS ALERT") {
		t.Fatalf("B logged no error:\n%s", b.s.Logs.String())
	}

	// More activity in A and more witness rounds (1s) do not clear it,
	// nor does a restart of B.
	for i := range 3 {
		a.ward(t, "audit", "hash", fmt.Sprint(i))
	}
	time.Sleep(3 * time.Second)
	checkAlert("after more rounds")
	b.s.Stop()
	b.s.Start()
	b.s.Unseal(b.shares[:3])
	checkAlert("after B restarted")

	// A finds out itself from B's cosignature, kept behind its barrier:
	// its next round with B raises the alert about its own log.
	r = e2e.Ward(t, a.s.Addr, "", "federation", "refresh", "b.example")
	if r.Code == 0 || !strings.Contains(r.Stderr, "AUDIT LOG ROLLBACK of this authority's own log, seen by its witness b.example") {
		t.Fatalf("refresh in the rolled-back A: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	if show := a.ward(t, "federation", "show", "b.example"); !strings.Contains(show, "OWN AUDIT LOG ROLLBACK:") {
		t.Fatalf("federation show in A:\n%s", show)
	}
	if h := httpOf(a, "/healthz"); h != "" && !strings.Contains(h, "warning: federation: AUDIT LOG ROLLBACK of this authority's own audit log") {
		t.Fatalf("/healthz of A:\n%s", h)
	}
	if m := httpOf(a, "/metrics"); m != "" && !strings.Contains(m, `ward_federation_witness_own_log_alert{reason="went_backwards",trust_domain="b.example"} 1`) {
		t.Fatalf("/metrics of A lack the alert:\n%s", e2e.GrepLines(m, "ward_federation_witness"))
	}

	// A's own verify, with no local memory, fails too: B cosigned a
	// checkpoint A's log no longer extends.
	r = e2e.Ward(t, a.s.Addr, "", "audit", "verify", "--state-dir", filepath.Join(t.TempDir(), "fresh"))
	if r.Code == 0 || !strings.Contains(r.Stdout, "PROBLEM witnessed by b.example at size ") || !strings.Contains(r.Stdout, "AUDIT LOG ROLLBACK") {
		t.Fatalf("audit verify in the rolled-back A: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	t.Logf("ward audit verify in the rolled-back A:\n%s", r.Stdout)
}

// auditSize is the size of c's latest audit checkpoint.
func auditSize(t *testing.T, c *cluster) uint64 {
	t.Helper()
	out := c.ward(t, "audit", "checkpoint")
	m := regexp.MustCompile(`"size":\s*(\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no size in ward audit checkpoint:\n%s", out)
	}
	n, _ := strconv.ParseUint(m[1], 10, 64)
	return n
}

// waitVerifyWitnessed runs `ward audit verify` in c until it lists witness
// td at size at least size (c picks the cosignature up on its next round
// witnessing td), and returns its output.
func waitVerifyWitnessed(t *testing.T, c *cluster, td string, size uint64) string {
	t.Helper()
	re := regexp.MustCompile(`OK: witnessed by ` + regexp.QuoteMeta(td) + ` at size (\d+), time `)
	deadline := time.Now().Add(60 * time.Second)
	for {
		c.ward(t, "federation", "refresh", td)
		out := c.ward(t, "audit", "verify")
		if m := re.FindStringSubmatch(out); m != nil {
			if n, _ := strconv.ParseUint(m[1], 10, 64); n >= size {
				return out
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("ward audit verify never listed %s at size %d or more:\n%s", td, size, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

type witnessJSON struct {
	WitnessKeyID  string `json:"witnessKeyId"`
	WitnessedSize string `json:"witnessedSize"`
	WitnessError  string `json:"witnessError"`
	WitnessAlert  *struct {
		Reason string `json:"reason"`
		Count  int    `json:"count"`
	} `json:"witnessAlert"`
}

func fedWitness(t *testing.T, c *cluster, td string) witnessJSON {
	t.Helper()
	var w witnessJSON
	out := c.ward(t, "federation", "show", td, "--json")
	if err := json.Unmarshal([]byte(out), &w); err != nil {
		t.Fatalf("ward federation show --json: %v\n%s", err, out)
	}
	return w
}
