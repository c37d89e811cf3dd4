package kubeapi

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func testServer(t *testing.T, h http.HandlerFunc) (*Client, string) {
	t.Helper()
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("tok-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{URL: srv.URL, CAFile: ca, TokenFile: tok})
	if err != nil {
		t.Fatal(err)
	}
	return c, tok
}

func TestReviewToken(t *testing.T) {
	var auth []string
	c, tokFile := testServer(t, func(w http.ResponseWriter, r *http.Request) {
		auth = append(auth, r.Header.Get("Authorization"))
		if r.Method != http.MethodPost || r.URL.Path != "/apis/authentication.k8s.io/v1/tokenreviews" {
			http.Error(w, "wrong call", 400)
			return
		}
		var in struct {
			Spec struct {
				Token     string   `json:"token"`
				Audiences []string `json:"audiences"`
			} `json:"spec"`
		}
		json.NewDecoder(r.Body).Decode(&in)
		ok := in.Spec.Token == "agent-token" && len(in.Spec.Audiences) == 1 && in.Spec.Audiences[0] == "ward"
		json.NewEncoder(w).Encode(map[string]any{"status": map[string]any{"authenticated": ok, "audiences": in.Spec.Audiences,
			"user": map[string]any{"username": "system:serviceaccount:ns:sa", "extra": map[string][]string{"authentication.kubernetes.io/pod-uid": {"u"}}}}})
	})
	st, err := c.ReviewToken(context.Background(), "agent-token", []string{"ward"})
	if err != nil || !st.Authenticated || st.User.Username != "system:serviceaccount:ns:sa" || st.User.Extra["authentication.kubernetes.io/pod-uid"][0] != "u" {
		t.Fatalf("review: %+v %v", st, err)
	}
	// The token file is read at every request (projected tokens rotate).
	os.WriteFile(tokFile, []byte("tok-2"), 0o600)
	if st, err := c.ReviewToken(context.Background(), "agent-token", []string{"vault"}); err != nil || st.Authenticated {
		t.Fatalf("other audience: %+v %v", st, err)
	}
	if len(auth) != 2 || auth[0] != "Bearer tok-1" || auth[1] != "Bearer tok-2" {
		t.Fatalf("bearer tokens sent: %q", auth)
	}
}

func TestStatusErrorsAndBounds(t *testing.T) {
	c, _ := testServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/forbidden":
			w.WriteHeader(403)
			io.WriteString(w, `{"kind":"Status","reason":"Forbidden","message":"pods is forbidden: User \"x\" cannot list"}`)
		case "/big":
			io.WriteString(w, `{"a":"`+strings.Repeat("x", 4096)+`"}`)
		case "/watch":
			io.WriteString(w, `{"type":"ADDED","object":{"n":1}}`+"\n"+`{"type":"ADDED","object":{"n":"`+strings.Repeat("y", 8192)+`"}}`+"\n")
		}
	})
	ctx := context.Background()
	var out map[string]any
	err := c.Do(ctx, "GET", "/forbidden", nil, nil, &out, 1<<20)
	if !IsStatus(err, 403) || !strings.Contains(err.Error(), "cannot list") {
		t.Fatalf("403: %v", err)
	}
	if err := c.Do(ctx, "GET", "/big", nil, nil, &out, 1024); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized answer: %v", err)
	}
	body, err := c.Stream(ctx, "/watch", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	d := NewEventDecoder(body, 2048)
	var ev map[string]any
	if err := d.Decode(&ev); err != nil || ev["type"] != "ADDED" {
		t.Fatalf("first event: %v %v", ev, err)
	}
	if err := d.Decode(&ev); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized event: %v", err)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := New(Config{}); err == nil || !strings.Contains(err.Error(), "not running in a pod") {
		t.Fatalf("no URL outside a pod: %v", err)
	}
	if _, err := New(Config{URL: "http://10.0.0.1", CAFile: "x", TokenFile: "y"}); err == nil || !strings.Contains(err.Error(), "https") {
		t.Fatalf("plain http: %v", err)
	}
}

// FuzzEventDecoder: a watch stream of any bytes never panics the decoder
// nor yields an object read past its bound.
func FuzzEventDecoder(f *testing.F) {
	f.Add([]byte(`{"type":"ADDED","object":{"metadata":{"uid":"u"}}}` + "\n" + `{"type":"DELETED"}`))
	f.Add([]byte(`{"type":"ERROR","object":{"code":410}}{"a":[1,2,{"b":"` + strings.Repeat("z", 300) + `"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d := NewEventDecoder(strings.NewReader(string(data)), 256)
		for range 64 {
			var v struct {
				Type   string         `json:"type"`
				Object map[string]any `json:"object"`
			}
			if err := d.Decode(&v); err != nil {
				return
			}
			if len(v.Type) > 256 {
				t.Fatalf("decoded a %d-byte type past the 256-byte bound", len(v.Type))
			}
		}
	})
}
