package scan_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/wardproject/ward/internal/dataplane/gateway"
	"github.com/wardproject/ward/internal/dataplane/proxy"
	"github.com/wardproject/ward/internal/governance/scan"
	"github.com/wardproject/ward/internal/testutil/proxytest"
)

func scanOne(t testing.TB, target string, opts scan.Options) *scan.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := scan.New(opts).Scan(ctx, target)
	if r.Error != "" {
		t.Fatalf("scan %s: %s", target, r.Error)
	}
	return r
}

func rules(r *scan.Result) map[string]scan.Finding {
	m := map[string]scan.Finding{}
	for _, f := range r.Findings {
		m[f.Rule] = f
	}
	return m
}

func wantRules(t *testing.T, r *scan.Result, want ...string) {
	t.Helper()
	got := rules(r)
	for _, w := range want {
		if _, ok := got[w]; !ok {
			t.Errorf("%s: no %s finding; findings: %v", r.Target, w, r.Findings)
		}
	}
}

func noRules(t *testing.T, r *scan.Result, unwanted ...string) {
	t.Helper()
	got := rules(r)
	for _, u := range unwanted {
		if f, ok := got[u]; ok {
			t.Errorf("%s: unexpected finding %s: %s", r.Target, u, f.Evidence)
		}
	}
}

func offered(r *scan.Result) []string {
	var out []string
	for _, p := range r.Protocols {
		if p.Offered {
			out = append(out, p.Version.String())
		}
	}
	return out
}

func protocol(r *scan.Result, v scan.Version) scan.Protocol {
	for _, p := range r.Protocols {
		if p.Version == v {
			return p
		}
	}
	return scan.Protocol{}
}

func suiteIDs(r *scan.Result, v scan.Version) []uint16 {
	for _, p := range r.Protocols {
		if p.Version == v {
			var ids []uint16
			for _, s := range p.Suites {
				ids = append(ids, s.ID)
			}
			return ids
		}
	}
	return nil
}

// TestScanOpenSSL scans deliberately weak openssl servers and a strong
// one, and checks the findings the rubric gives each.
func TestScanOpenSSL(t *testing.T) {
	s := startServers(t)

	legacy := scanOne(t, s.legacy, scan.Options{ServerName: "legacy.test", Roots: s.ca.pool, RootsName: "test root"})
	if got := offered(legacy); !slices.Equal(got, []string{"TLSv1.0"}) {
		t.Errorf("legacy offers %v, want TLSv1.0 only", got)
	}
	wantRules(t, legacy, "protocol-tls10", "protocol-no-tls13", "suite-null", "suite-anon", "suite-md5",
		"suite-no-forward-secrecy", "suite-cbc", "client-cert-not-requested")
	noRules(t, legacy, "chain-untrusted", "hostname-mismatch", "protocol-sslv3", "client-cert-required")
	if legacy.Chain == nil || !legacy.Chain.Trusted || legacy.Chain.Certificates[0].KeyType != "RSA" || legacy.Chain.Certificates[0].KeyBits != 2048 {
		t.Errorf("legacy chain: %+v", legacy.Chain)
	}
	if scan.Worst(legacy.Findings) != scan.Critical {
		t.Errorf("legacy: worst finding %v, want critical", scan.Worst(legacy.Findings))
	}

	all := scanOne(t, s.legacyAll, scan.Options{ServerName: "legacy.test", Roots: s.ca.pool})
	if got := offered(all); !slices.Equal(got, []string{"TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3"}) {
		t.Errorf("legacy-all offers %v", got)
	}
	wantRules(t, all, "protocol-tls10", "protocol-tls11", "suite-null", "suite-anon", "pq-not-offered", "client-cert-not-requested")
	// -serverpref: the server's order decides.
	for _, v := range []scan.Version{scan.TLS10, scan.TLS11, scan.TLS12} {
		if p := protocol(all, v); !p.ServerOrder || p.Preferred == "" {
			t.Errorf("legacy-all %s: server order %t, preferred %q", v, p.ServerOrder, p.Preferred)
		}
	}
	if p := protocol(legacy, scan.TLS10); p.ServerOrder {
		t.Errorf("legacy (no -serverpref): server order %t, preferred %q", p.ServerOrder, p.Preferred)
	}

	// A client certificate required, in TLS 1.3 (the server says so after
	// the handshake) and in TLS 1.2 (the handshake fails).
	for _, addr := range []string{s.mtls, s.mtls12} {
		r := scanOne(t, addr, scan.Options{ServerName: "modern.test", Roots: s.ca.pool})
		wantRules(t, r, "client-cert-required")
		if !r.ClientAuth.Requested || !r.ClientAuth.Required || len(r.ClientAuth.AcceptableCAs) != 1 {
			t.Errorf("%s client auth: %+v", addr, r.ClientAuth)
		}
		if r.Chain == nil || !r.Chain.Trusted {
			t.Errorf("%s chain: %+v", addr, r.Chain)
		}
	}

	// The wrong name and the wrong roots are findings too.
	wrong := scanOne(t, s.legacy, scan.Options{ServerName: "other.test"})
	wantRules(t, wrong, "hostname-mismatch", "chain-untrusted")

	modern := scanOne(t, s.modern, scan.Options{ServerName: "modern.test", Roots: s.ca.pool})
	if got := offered(modern); !slices.Equal(got, []string{"TLSv1.3"}) {
		t.Errorf("modern offers %v, want TLSv1.3 only", got)
	}
	// OpenSSL 3.0 has no ML-KEM: the hybrid is missing, nothing else.
	wantRules(t, modern, "pq-not-offered")
	if w := scan.Worst(modern.Findings); w > scan.Medium {
		t.Errorf("modern: worst finding %v: %v", w, modern.Findings)
	}
	if modern.Chain == nil || !modern.Chain.Trusted || modern.Chain.HostnameMatch == nil || !*modern.Chain.HostnameMatch {
		t.Errorf("modern chain: %+v", modern.Chain)
	}
	if len(modern.Protocols[4].Groups) == 0 {
		t.Error("modern: no TLS 1.3 groups")
	}
	t.Logf("probes: legacy %d in %.0f ms, legacy-all %d in %.0f ms, modern %d in %.0f ms",
		legacy.Probes, legacy.DurationMS, all.Probes, all.DurationMS, modern.Probes, modern.DurationMS)
}

// sslscanResult is what `sslscan --xml=-` reports that ward compares.
type sslscanResult struct {
	Protocols []struct {
		Type    string `xml:"type,attr"`
		Version string `xml:"version,attr"`
		Enabled string `xml:"enabled,attr"`
	} `xml:"ssltest>protocol"`
	Ciphers []struct {
		Status  string `xml:"status,attr"`
		Version string `xml:"sslversion,attr"`
		Name    string `xml:"cipher,attr"`
		ID      string `xml:"id,attr"`
	} `xml:"ssltest>cipher"`
	Groups []struct {
		Version string `xml:"sslversion,attr"`
		Name    string `xml:"name,attr"`
		ID      string `xml:"id,attr"`
	} `xml:"ssltest>group"`
	Error string `xml:"error"`
}

func runSSLScan(t testing.TB, target string, sni string) *sslscanResult {
	t.Helper()
	bin := need(t, "sslscan")
	args := []string{"--xml=-", "--no-colour", "--no-heartbleed", "--no-compression", "--no-renegotiation", "--no-fallback"}
	if sni != "" {
		args = append(args, "--sni-name="+sni)
	}
	out, err := exec.Command(bin, append(args, target)...).Output()
	if err != nil {
		t.Fatalf("sslscan %s: %v", target, err)
	}
	start, end := bytes.Index(out, []byte("<?xml")), bytes.LastIndex(out, []byte("</document>"))
	if start < 0 || end < 0 {
		t.Fatalf("sslscan %s printed no XML document:\n%s", target, out)
	}
	var r sslscanResult
	if err := xml.Unmarshal(out[start:end+len("</document>")], &r); err != nil {
		t.Fatalf("sslscan XML: %v", err)
	}
	if r.Error != "" {
		t.Fatalf("sslscan %s: %s", target, r.Error)
	}
	return &r
}

// sslscanVersion maps sslscan's names to ward's.
func sslscanVersion(typ, v string) string {
	if typ == "ssl" {
		return "SSLv" + v
	}
	return "TLSv" + v
}

// compareWithSSLScan: every protocol and every suite sslscan reports for
// target, ward reports too.
func compareWithSSLScan(t *testing.T, name, target, sni string, r *scan.Result) {
	t.Helper()
	ss := runSSLScan(t, target, sni)
	for _, p := range ss.Protocols {
		v := sslscanVersion(p.Type, p.Version)
		if v == "SSLv2" {
			continue // not probed by ward (docs/scan.md)
		}
		wardOffers := slices.Contains(offered(r), v)
		if (p.Enabled == "1") != wardOffers {
			t.Errorf("%s: sslscan says %s enabled=%s, ward offered=%t", name, v, p.Enabled, wardOffers)
		}
	}
	sslscanSuites, matched, preferred := 0, 0, 0
	for _, c := range ss.Ciphers {
		id, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(c.ID), "0x"), 16, 16)
		if err != nil {
			t.Errorf("%s: sslscan cipher id %q: %v", name, c.ID, err)
			continue
		}
		sslscanSuites++
		var v scan.Version
		for _, vv := range scan.Versions {
			if vv.String() == c.Version {
				v = vv
			}
		}
		if !slices.Contains(suiteIDs(r, v), uint16(id)) {
			t.Errorf("%s: sslscan reports %s %s (0x%04X), ward does not", name, c.Version, c.Name, id)
			continue
		}
		// Where ward finds the server's own order, sslscan's preferred
		// suite is the server's pick.
		if p := protocol(r, v); c.Status == "preferred" && p.ServerOrder {
			preferred++
			if p.Preferred != scan.SuiteByID(uint16(id)).Name {
				t.Errorf("%s: sslscan's preferred %s suite is %s, ward says the server prefers %s", name, c.Version, c.Name, p.Preferred)
			}
		}
		matched++
	}
	// Groups: TLS 1.3 (HelloRetryRequests) and the ECDHE curves of the
	// highest version below it (ServerKeyExchange).
	wardGroups := map[string][]string{}
	for _, p := range r.Protocols {
		for _, g := range p.Groups {
			wardGroups[p.Version.String()] = append(wardGroups[p.Version.String()], fmt.Sprintf("0x%04x", g.ID))
		}
	}
	groups := 0
	for _, g := range ss.Groups {
		groups++
		if !slices.Contains(wardGroups[g.Version], strings.ToLower(g.ID)) {
			t.Errorf("%s: sslscan reports %s group %s (%s), ward does not (ward: %v)", name, g.Version, g.Name, g.ID, wardGroups)
		}
	}
	wardSuites := 0
	for _, p := range r.Protocols {
		wardSuites += len(p.Suites)
	}
	t.Logf("%s: sslscan %d suites, all %d found by ward (ward: %d); sslscan %d groups; the server's preferred suite agreed in %d versions",
		name, sslscanSuites, matched, wardSuites, groups, preferred)
}

// TestScanMatchesSSLScan scans the same endpoints with ward and sslscan.
func TestScanMatchesSSLScan(t *testing.T) {
	need(t, "sslscan")
	s := startServers(t)
	for _, tc := range []struct{ name, addr, sni string }{
		{"legacy", s.legacy, "legacy.test"}, {"legacy-all", s.legacyAll, "legacy.test"}, {"modern", s.modern, "modern.test"},
		{"mtls", s.mtls, "modern.test"}, {"mtls12", s.mtls12, "modern.test"},
	} {
		r := scanOne(t, tc.addr, scan.Options{ServerName: tc.sni, Roots: s.ca.pool})
		compareWithSSLScan(t, tc.name, tc.addr, tc.sni, r)
	}
	w := startWardProxy(t)
	r := scanOne(t, w.addr, scan.Options{Roots: w.roots, SPIFFEID: w.id})
	compareWithSSLScan(t, "ward-proxy", w.addr, "", r)
}

// wardProxy is ward's own proxy with one inbound mTLS listener.
type wardProxy struct {
	addr  string
	id    string
	roots *x509.CertPool
}

func startWardProxy(t testing.TB) *wardProxy {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	dir, err := os.MkdirTemp("", "ws") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	auth, err := proxytest.NewAuthority(ctx, dir, "prod.example")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { auth.Close() })
	api, err := auth.AddWorkload(ctx, "/ns/shop/api", 0, "api.prod.example")
	if err != nil {
		t.Fatal(err)
	}
	policyDir := filepath.Join(dir, "policy")
	os.Mkdir(policyDir, 0o700)
	os.WriteFile(filepath.Join(policyDir, "main.cedar"), []byte(`permit (principal, action == Action::"connect", resource);`), 0o600)
	cfg := &proxy.Config{
		WorkloadAPISocket: api.Addr,
		PolicyFiles:       []string{policyDir},
		Inbound: []proxy.Inbound{{Name: "api", Listen: "127.0.0.1:0", Forward: "127.0.0.1:9", PeerIdentity: proxy.PeerIdentityNone,
			Service: proxy.Service{Name: "api", Port: 8443}}},
	}
	p, err := proxy.New(cfg, proxy.WithLogger(slog.New(slog.DiscardHandler)), proxy.WithAccessLog(ioDiscard{}))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	select {
	case <-p.Started():
	case err := <-done:
		t.Fatalf("proxy stopped: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("proxy did not start")
	}
	b, err := auth.CA.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	for _, c := range b.X509Authorities() {
		roots.AddCert(c)
	}
	return &wardProxy{addr: p.Addr("api").String(), id: api.ID.String(), roots: roots}
}

type ioDiscard struct{}

func (ioDiscard) Write(p []byte) (int, error) { return len(p), nil }

// TestScanWardProxy: ward's own inbound listener requires a client
// certificate, speaks TLS 1.3 only with the post-quantum hybrid preferred,
// and serves an SVID that verifies to its trust domain's bundle.
func TestScanWardProxy(t *testing.T) {
	w := startWardProxy(t)
	r := scanOne(t, w.addr, scan.Options{Roots: w.roots, RootsName: "trust domain prod.example", SPIFFEID: w.id})
	wantRules(t, r, "client-cert-required")
	if !r.ClientAuth.Required {
		t.Errorf("client auth: %+v", r.ClientAuth)
	}
	if got := offered(r); !slices.Equal(got, []string{"TLSv1.3"}) {
		t.Errorf("ward proxy offers %v, want TLSv1.3 only", got)
	}
	if !r.PostQuantum.Offered || !r.PostQuantum.Preferred {
		t.Errorf("post-quantum: %+v", r.PostQuantum)
	}
	if r.Chain == nil || !r.Chain.Trusted || r.Chain.SPIFFEIDMatch == nil || !*r.Chain.SPIFFEIDMatch {
		t.Errorf("chain: %+v", r.Chain)
	}
	if w := scan.Worst(r.Findings); w > scan.Info {
		t.Errorf("ward proxy: worst finding %v: %v", w, r.Findings)
	}
	// The wrong SPIFFE ID is a finding.
	r = scanOne(t, w.addr, scan.Options{Roots: w.roots, SPIFFEID: "spiffe://prod.example/ns/shop/web"})
	wantRules(t, r, "spiffe-id-mismatch")
	// And so is scanning it against roots that do not hold its bundle.
	r = scanOne(t, w.addr, scan.Options{})
	wantRules(t, r, "chain-untrusted")
}

// TestOutputs: the JSON and SARIF forms carry the findings.
func TestOutputs(t *testing.T) {
	s := startServers(t)
	r := scanOne(t, s.legacy, scan.Options{ServerName: "legacy.test", Roots: s.ca.pool})
	var buf bytes.Buffer
	if err := scan.WriteJSON(&buf, []*scan.Result{r}); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Results []struct {
			Target    string
			Protocols []struct {
				Version string
				Offered bool
			}
			Findings []struct{ Rule, Severity string }
		}
	}
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil || len(doc.Results) != 1 || doc.Results[0].Protocols[1].Version != "TLSv1.0" ||
		!doc.Results[0].Protocols[1].Offered || doc.Results[0].Findings[0].Severity != "critical" {
		t.Fatalf("JSON: %v\n%s", err, buf.String())
	}
	buf.Reset()
	if err := scan.WriteSARIF(&buf, []*scan.Result{r}, "test"); err != nil {
		t.Fatal(err)
	}
	var sarif struct {
		Version string
		Runs    []struct {
			Tool struct {
				Driver struct{ Rules []struct{ ID string } }
			}
			Results []struct {
				RuleID    string
				RuleIndex int
				Level     string
				Locations []struct {
					PhysicalLocation struct{ ArtifactLocation struct{ URI string } }
				}
			}
		}
	}
	if err := json.Unmarshal(buf.Bytes(), &sarif); err != nil || sarif.Version != "2.1.0" || len(sarif.Runs) != 1 {
		t.Fatalf("SARIF: %v\n%s", err, buf.String())
	}
	run := sarif.Runs[0]
	if len(run.Results) != len(r.Findings) {
		t.Fatalf("SARIF has %d results for %d findings", len(run.Results), len(r.Findings))
	}
	for _, res := range run.Results {
		if run.Tool.Driver.Rules[res.RuleIndex].ID != res.RuleID || res.Locations[0].PhysicalLocation.ArtifactLocation.URI != "tls://"+s.legacy {
			t.Errorf("SARIF result %+v", res)
		}
	}
	if run.Results[0].Level != "error" {
		t.Errorf("SARIF level of the worst finding: %s", run.Results[0].Level)
	}
	buf.Reset()
	if err := scan.WriteTable(&buf, []*scan.Result{r}); err != nil || !strings.Contains(buf.String(), "CRITICAL  suite-null") {
		t.Errorf("table: %v\n%s", err, buf.String())
	}
}

// TestUnreachable: a closed port is one finding, at once.
func TestUnreachable(t *testing.T) {
	r := scan.New(scan.Options{Timeout: 2 * time.Second}).Scan(context.Background(), "127.0.0.1:1")
	if r.Error == "" || len(r.Findings) != 1 || r.Findings[0].Rule != "scan-error" || r.Probes != 0 {
		t.Fatalf("%+v", r)
	}
}

// TestNotTLS: a port that answers but speaks no TLS is a scan error (a
// finding), not an empty, clean result.
func TestNotTLS(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write([]byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"))
				io.Copy(io.Discard, c)
			}()
		}
	}()
	r := scan.New(scan.Options{Timeout: 5 * time.Second}).Scan(context.Background(), l.Addr().String())
	if !strings.HasPrefix(r.Error, "no TLS: ") || !strings.Contains(r.Error, "not TLS") || len(r.Findings) != 1 || r.Findings[0].Rule != "scan-error" {
		t.Fatalf("error %q, findings %v", r.Error, r.Findings)
	}
}

// TestOCSPAndExpiry: a stapled OCSP response (good, revoked, none where the
// certificate names a responder), and certificates judged at later times.
func TestOCSPAndExpiry(t *testing.T) {
	s := startServers(t)
	opts := scan.Options{ServerName: "ocsp.test", Roots: s.ca.pool}

	good := scanOne(t, startStapling(t, s.ca, ocsp.Good), opts)
	if o := good.Chain.OCSP; o == nil || !o.Stapled || o.Status != "good" || o.Error != "" {
		t.Errorf("good staple: %+v", o)
	}
	noRules(t, good, "ocsp-revoked", "ocsp-invalid", "ocsp-not-stapled")

	revoked := scanOne(t, startStapling(t, s.ca, ocsp.Revoked), opts)
	if o := revoked.Chain.OCSP; o == nil || o.Status != "revoked" {
		t.Errorf("revoked staple: %+v", o)
	}
	wantRules(t, revoked, "ocsp-revoked")

	none := scanOne(t, startStapling(t, s.ca, -1), opts)
	wantRules(t, none, "ocsp-not-stapled")
	if got := none.Chain.Certificates[0].OCSPServers; !slices.Equal(got, []string{ocspServer}) {
		t.Errorf("OCSP servers %v", got)
	}

	// The modern server's certificate lives 30 days from an hour ago.
	at := func(d time.Duration) scan.Options {
		return scan.Options{ServerName: "modern.test", Roots: s.ca.pool, Now: func() time.Time { return time.Now().Add(d) }}
	}
	wantRules(t, scanOne(t, s.modern, at(28*24*time.Hour)), "chain-expiring")
	noRules(t, scanOne(t, s.modern, at(20*24*time.Hour)), "chain-expiring", "chain-expired")
	wantRules(t, scanOne(t, s.modern, at(31*24*time.Hour)), "chain-expired", "chain-untrusted")
	wantRules(t, scanOne(t, s.modern, at(-2*time.Hour)), "chain-not-yet-valid")
}

// startGateway runs ward's east-west gateway with one route, service api
// of trust domain prod.example, to forward.
func startGateway(t testing.TB, forward string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	g, err := gateway.New(&gateway.Config{Listen: "127.0.0.1:0", TrustDomain: "prod.example", AccessLog: "off",
		Routes: []gateway.Route{{Service: "api", Forward: forward}}}, gateway.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	select {
	case <-g.Started():
	case err := <-done:
		t.Fatalf("gateway stopped: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("gateway did not start")
	}
	return g.Addr("listen").String()
}

// TestScanThroughGateway: ward's gateway does not terminate TLS, so a scan
// with a route's SNI name measures the inbound proxy behind it (the same
// result as scanning the proxy), and a name it does not route is refused:
// nothing speaks TLS there.
func TestScanThroughGateway(t *testing.T) {
	w := startWardProxy(t)
	gw := startGateway(t, w.addr)
	r := scanOne(t, gw, scan.Options{ServerName: "api.prod.example.ward", Roots: w.roots, SPIFFEID: w.id})
	if got := offered(r); !slices.Equal(got, []string{"TLSv1.3"}) {
		t.Errorf("through the gateway: offered %v", got)
	}
	if !r.ClientAuth.Required || !r.PostQuantum.Preferred || r.Chain == nil || !r.Chain.Trusted || !*r.Chain.SPIFFEIDMatch {
		t.Errorf("through the gateway: client auth %+v, pq %+v, chain %+v", r.ClientAuth, r.PostQuantum, r.Chain)
	}
	// The SNI is a routing name here: with --spiffe-id only the SPIFFE ID
	// is checked, as ward's outbound proxies do through a gateway.
	if w := scan.Worst(r.Findings); w > scan.Info {
		t.Errorf("through the gateway: worst finding %v: %v", w, r.Findings)
	}

	r = scan.New(scan.Options{ServerName: "other.prod.example.ward"}).Scan(context.Background(), gw)
	if !strings.HasPrefix(r.Error, "no TLS") {
		t.Errorf("unrouted name: error %q, findings %v", r.Error, r.Findings)
	}
}
