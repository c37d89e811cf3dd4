package webhook

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

const testRules = `
workload_api_socket: /run/ward/agent.sock
dns_name: ward-webhook.ward-system.svc
identities:
  - {namespace: payments, service_account: api, spiffe_id: spiffe://example.org/payments/api}
encrypted_storage_classes: [encrypted-ssd]
classifications:
  public: []
  internal: [workload-identity]
  confidential: [workload-identity, proxy, encrypted-storage]
  restricted: [workload-identity, proxy, encrypted-storage]
`

func testConfig(t *testing.T, extra string) *Config {
	t.Helper()
	c, err := ParseConfig([]byte(testRules + extra))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func review(kind, ns, op string, obj any) []byte {
	o, _ := json.Marshal(obj)
	b, _ := json.Marshal(map[string]any{
		"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
		"request": map[string]any{"uid": "u-1", "kind": map[string]string{"version": "v1", "kind": kind}, "namespace": ns, "operation": op, "object": json.RawMessage(o)},
	})
	return b
}

// update is review for an UPDATE of old to obj.
func update(kind, ns string, old, obj any) []byte {
	var m map[string]any
	json.Unmarshal(review(kind, ns, "UPDATE", obj), &m)
	o, _ := json.Marshal(old)
	m["request"].(map[string]any)["oldObject"] = json.RawMessage(o)
	b, _ := json.Marshal(m)
	return b
}

func pod(ns, sa string, ann map[string]string) map[string]any {
	return map[string]any{"metadata": map[string]any{"name": "p", "namespace": ns, "annotations": ann}, "spec": map[string]any{"serviceAccountName": sa}}
}

func pvc(ns string, class *string) map[string]any {
	return map[string]any{"metadata": map[string]any{"name": "data", "namespace": ns}, "spec": map[string]any{"storageClassName": class}}
}

func namespace(name string, labels map[string]string) map[string]any {
	return map[string]any{"metadata": map[string]any{"name": name, "labels": labels}}
}

func post(t *testing.T, h http.Handler, path string, body []byte) (int, *Response) {
	t.Helper()
	req := httptest.NewRequest("POST", path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 200 {
		return rec.Code, nil
	}
	var r Review
	if err := json.Unmarshal(rec.Body.Bytes(), &r); err != nil || r.Response == nil || r.Kind != "AdmissionReview" || r.APIVersion != "admission.k8s.io/v1" {
		t.Fatalf("response %s: %v", rec.Body.String(), err)
	}
	if r.Response.UID != "u-1" {
		t.Fatalf("uid %q", r.Response.UID)
	}
	return 200, r.Response
}

func TestRulesEnforce(t *testing.T) {
	h := NewHandler(testConfig(t, ""), nil)
	ssd, gp := "encrypted-ssd", "standard"
	cases := []struct {
		name, path string
		body       []byte
		allowed    bool
		want       []string // in the denial message
	}{
		{"classified namespace", "/validate", review("Namespace", "", "CREATE", namespace("payments", map[string]string{"ward.dev/classification": "confidential"})), true, nil},
		{"exempt namespace", "/validate", review("Namespace", "", "CREATE", namespace("kube-system", nil)), true, nil},
		{"unlabelled namespace", "/validate", review("Namespace", "", "CREATE", namespace("shop", nil)), false,
			[]string{"rule namespace-classification", `namespace "shop" has no ward.dev/classification label`, "kubectl label namespace shop ward.dev/classification=<classification>", "confidential, internal, public, restricted"}},
		{"label removed on update", "/validate", review("Namespace", "", "UPDATE", namespace("shop", map[string]string{"team": "a"})), false, []string{"rule namespace-classification"}},
		{"classification downgraded", "/validate", update("Namespace", "",
			namespace("payments", map[string]string{"ward.dev/classification": "restricted"}), namespace("payments", map[string]string{"ward.dev/classification": "public"})), false,
			[]string{"rule namespace-classification", `ward.dev/classification may not change from "restricted" to "public"`, "create a new namespace"}},
		{"other label changed", "/validate", update("Namespace", "",
			namespace("payments", map[string]string{"ward.dev/classification": "restricted"}), namespace("payments", map[string]string{"ward.dev/classification": "restricted", "team": "b"})), true, nil},
		{"classification added on update", "/validate", update("Namespace", "",
			namespace("shop", nil), namespace("shop", map[string]string{"ward.dev/classification": "internal"})), true, nil},
		{"unknown classification", "/validate", review("Namespace", "", "CREATE", namespace("shop", map[string]string{"ward.dev/classification": "secret"})), false,
			[]string{`ward.dev/classification="secret" is not a classification`}},
		{"compliant pod", "/validate/confidential", review("Pod", "payments", "CREATE", pod("payments", "api", nil)), true, nil},
		{"pod without identity", "/validate/confidential", review("Pod", "payments", "CREATE", pod("payments", "", nil)), false,
			[]string{"rule workload-identity", `service account "default", which maps to no ward identity`, "one of the service accounts with a ward identity here (api)"}},
		{"pod opting out", "/validate/confidential", review("Pod", "payments", "CREATE", pod("payments", "api", map[string]string{"ward.dev/proxy": "disabled"})), false,
			[]string{"rule proxy", "ward.dev/proxy=disabled", "remove the annotation"}},
		{"both broken", "/validate/restricted", review("Pod", "payments", "CREATE", pod("payments", "x", map[string]string{"ward.dev/proxy": "disabled"})), false,
			[]string{"rule workload-identity", "rule proxy"}},
		{"internal needs no proxy", "/validate/internal", review("Pod", "payments", "CREATE", pod("payments", "api", map[string]string{"ward.dev/proxy": "disabled"})), true, nil},
		{"public needs nothing", "/validate/public", review("Pod", "web", "CREATE", pod("web", "", nil)), true, nil},
		{"compliant pvc", "/validate/confidential", review("PersistentVolumeClaim", "payments", "CREATE", pvc("payments", &ssd)), true, nil},
		{"pvc unencrypted class", "/validate/confidential", review("PersistentVolumeClaim", "payments", "CREATE", pvc("payments", &gp)), false,
			[]string{"rule encrypted-storage", `StorageClass "standard", which is not declared encrypted`, "encrypted-ssd"}},
		{"pvc default class", "/validate/confidential", review("PersistentVolumeClaim", "payments", "CREATE", pvc("payments", nil)), false,
			[]string{"rule encrypted-storage", "names no StorageClass"}},
		{"internal pvc", "/validate/internal", review("PersistentVolumeClaim", "payments", "CREATE", pvc("payments", &gp)), true, nil},
		{"unknown path classification", "/validate/secret", review("Pod", "payments", "CREATE", pod("payments", "api", nil)), false, []string{"disagree"}},
		{"pod update passes", "/validate/confidential", review("Pod", "payments", "UPDATE", pod("payments", "", nil)), true, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, r := post(t, h, c.path, c.body)
			if code != 200 {
				t.Fatalf("HTTP %d", code)
			}
			if r.Allowed != c.allowed {
				t.Fatalf("allowed %v, want %v (%+v)", r.Allowed, c.allowed, r.Status)
			}
			if !c.allowed {
				for _, w := range c.want {
					if !strings.Contains(r.Status.Message, w) {
						t.Errorf("message %q lacks %q", r.Status.Message, w)
					}
				}
			}
			if len(r.Warnings) != 0 {
				t.Errorf("warnings in enforce mode: %v", r.Warnings)
			}
		})
	}
}

func TestRulesWarnMode(t *testing.T) {
	h := NewHandler(testConfig(t, "mode: warn\n"), nil)
	_, r := post(t, h, "/validate/confidential", review("Pod", "payments", "CREATE", pod("payments", "", map[string]string{"ward.dev/proxy": "disabled"})))
	if !r.Allowed || r.Status != nil || len(r.Warnings) != 2 {
		t.Fatalf("warn mode: %+v", r)
	}
	if !strings.Contains(r.Warnings[0], "rule workload-identity") || !strings.Contains(r.Warnings[1], "rule proxy") {
		t.Fatalf("warnings: %q", r.Warnings)
	}
	// A request it cannot judge is refused in warn mode too.
	_, r = post(t, h, "/validate/secret", review("Pod", "payments", "CREATE", pod("payments", "api", nil)))
	if r.Allowed {
		t.Fatal("unknown classification path admitted")
	}
}

func TestHandlerRefusesBadRequests(t *testing.T) {
	h := NewHandler(testConfig(t, ""), nil)
	big := bytes.Repeat([]byte(" "), MaxBody+1)
	for _, c := range []struct {
		name, method, path, ctype string
		body                      []byte
		code                      int
	}{
		{"get", "GET", "/validate", "application/json", nil, 405},
		{"not json", "POST", "/validate", "text/plain", []byte("{}"), 415},
		{"garbage", "POST", "/validate", "application/json", []byte("{"), 400},
		{"wrong kind", "POST", "/validate", "application/json", []byte(`{"apiVersion":"v1","kind":"Pod"}`), 400},
		{"no uid", "POST", "/validate", "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}`), 400},
		{"trailing", "POST", "/validate", "application/json", append(review("Namespace", "", "CREATE", namespace("a", nil)), []byte("{}")...), 400},
		{"too big", "POST", "/validate", "application/json", big, 413},
		{"other path", "POST", "/mutate", "application/json", nil, 404},
	} {
		req := httptest.NewRequest(c.method, c.path, bytes.NewReader(c.body))
		req.Header.Set("Content-Type", c.ctype)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != c.code {
			t.Errorf("%s: HTTP %d, want %d (%s)", c.name, rec.Code, c.code, rec.Body.String())
		}
	}
}

func TestConfigValidation(t *testing.T) {
	base := "workload_api_socket: /s\ndns_name: a.b.svc\n"
	for _, c := range []struct{ yaml, want string }{
		{"mode: audit\nclassifications: {public: []}\n", "mode"},
		{"classifications: {public: []}\nidentities: [{namespace: a, service_account: b, spiffe_id: nope}]\n", "spiffe_id"},
		{"classifications: {x: [tls]}\n", `unknown rule "tls"`},
		{"classifications: {public: []}\nbogus: 1\n", "bogus"},
		{"", "classifications: required"},
		{"classifications: {public: []}\n", ""},
	} {
		_, err := ParseConfig([]byte(base + c.yaml))
		if c.want == "" {
			if err != nil {
				t.Errorf("%q: %v", c.yaml, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.yaml, err, c.want)
		}
	}
	if _, err := ParseConfig([]byte("classifications: {public: []}\n")); err == nil || !strings.Contains(err.Error(), "workload_api_socket") || !strings.Contains(err.Error(), "dns_name") {
		t.Errorf("missing socket and name: %v", err)
	}
	cfg := testConfig(t, "")
	if err := cfg.CheckTable([]string{"public", "internal", "confidential", "restricted"}); err != nil {
		t.Fatal(err)
	}
	err := cfg.CheckTable([]string{"public", "internal", "confidential", "restricted", "top-secret"})
	if err == nil || !strings.Contains(err.Error(), `"top-secret" (in the authority's classification table) has no rules`) {
		t.Fatal(err)
	}
	err = cfg.CheckTable([]string{"public", "internal", "confidential"})
	if err == nil || !strings.Contains(err.Error(), `"restricted" is not in the authority's classification table`) {
		t.Fatal(err)
	}
}

func FuzzParseReview(f *testing.F) {
	f.Add(review("Pod", "payments", "CREATE", pod("payments", "api", nil)))
	f.Add(review("Namespace", "", "CREATE", namespace("x", nil)))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"1","object":null}}`))
	cfg, err := ParseConfig([]byte(testRules))
	if err != nil {
		f.Fatal(err)
	}
	r := NewRules(cfg)
	f.Fuzz(func(t *testing.T, b []byte) {
		rev, err := ParseReview(b)
		if err != nil {
			return
		}
		if rev.Request == nil || rev.Request.UID == "" {
			t.Fatal("accepted without a request uid")
		}
		for _, c := range []string{"", "confidential", "nope"} {
			var vs []Violation
			if c == "" {
				vs, err = r.Namespaces(rev.Request)
			} else {
				vs, err = r.Classified(c, rev.Request)
			}
			for _, v := range vs {
				if v.Rule == "" || !strings.Contains(v.Message, "To comply") {
					t.Fatalf("violation without rule or remedy: %+v", v)
				}
			}
			_ = fmt.Sprint(err)
		}
	})
}

// TestInFlightBounded: one source cannot hold more than
// MaxInFlightPerSource reviews (each may buffer MaxBody bytes) before any
// authentication; another source is still served.
func TestInFlightBounded(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, MaxInFlight)
	h := limitInFlight(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
	}))
	codes := make(chan int, MaxInFlightPerSource+1)
	for i := 0; i < MaxInFlightPerSource; i++ {
		go func() {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodPost, "/validate", nil)
			req.RemoteAddr = "10.0.0.9:4000"
			h.ServeHTTP(rec, req)
			codes <- rec.Code
		}()
		<-entered
	}
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/validate", nil)
	req.RemoteAddr = "10.0.0.9:4001"
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("request %d from one source: %d, want 503", MaxInFlightPerSource+1, rec.Code)
	}
	other := make(chan int, 1)
	go func() {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/validate", nil)
		req.RemoteAddr = "10.0.0.1:5000"
		h.ServeHTTP(rec, req)
		other <- rec.Code
	}()
	<-entered // another source is served
	close(release)
	if c := <-other; c != http.StatusOK {
		t.Fatalf("other source: %d", c)
	}
	for i := 0; i < MaxInFlightPerSource; i++ {
		if c := <-codes; c != http.StatusOK {
			t.Fatalf("held request: %d", c)
		}
	}
}
