package dashboard

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"testing"
	"time"
)

func login(t *testing.T, srv *httptest.Server, tok string) *http.Cookie {
	t.Helper()
	resp, err := noRedirect().PostForm(srv.URL+"/login", url.Values{"token": {tok}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) != 1 {
		t.Fatalf("login: %d %v", resp.StatusCode, resp.Cookies())
	}
	return resp.Cookies()[0]
}

func statusWith(t *testing.T, srv *httptest.Server, method, path string, ck *http.Cookie) int {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, nil)
	req.AddCookie(ck)
	resp, err := noRedirect().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestStolenCookieDiesAtLogout (red team): a session cookie is random per
// login and held server-side: a copy stolen before logout is refused
// after it, while another login's session lives on.
func TestStolenCookieDiesAtLogout(t *testing.T) {
	_, srv := testHandler(t)
	ck, other := login(t, srv, testToken), login(t, srv, testToken)
	if ck.Value == other.Value {
		t.Fatal("two logins got the same session cookie")
	}
	stolen := *ck
	if code := statusWith(t, srv, http.MethodGet, "/api/state", &stolen); code != 200 {
		t.Fatalf("before logout: %d", code)
	}
	if code := statusWith(t, srv, http.MethodPost, "/logout", ck); code != http.StatusSeeOther {
		t.Fatalf("logout: %d", code)
	}
	if code := statusWith(t, srv, http.MethodGet, "/api/state", &stolen); code != http.StatusUnauthorized {
		t.Fatalf("the stolen cookie after logout: %d, want 401", code)
	}
	if code := statusWith(t, srv, http.MethodGet, "/api/state", other); code != 200 {
		t.Fatalf("another session after that logout: %d", code)
	}
}

// TestSessionsEndOnTokenChangeAndExpiry (red team): a token change ends
// every session (and the old token logs in no more); a session expires;
// the table is bounded.
func TestSessionsEndOnTokenChangeAndExpiry(t *testing.T) {
	var now atomic.Pointer[time.Time]
	t0 := time.Now()
	now.Store(&t0)
	h, err := New(Options{Token: testToken, SessionTTL: time.Hour, MaxSessions: 3, Clock: func() time.Time { return *now.Load() },
		State: func(context.Context) State { return State{} }})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()

	ck := login(t, srv, testToken)
	newTok := "fedcba9876543210fedcba9876543210-rotated"
	h.SetToken(newTok)
	if code := statusWith(t, srv, http.MethodGet, "/api/state", ck); code != http.StatusUnauthorized {
		t.Fatalf("a session after the token changed: %d", code)
	}
	resp, err := noRedirect().PostForm(srv.URL+"/login", url.Values{"token": {testToken}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("the old token logs in: %d", resp.StatusCode)
	}
	h.SetToken("")
	if resp, err := noRedirect().PostForm(srv.URL+"/login", url.Values{"token": {""}}); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("an empty token with the token file unreadable: %v %v", resp, err)
	}
	h.SetToken(newTok)

	ck = login(t, srv, newTok)
	t1 := t0.Add(59 * time.Minute)
	now.Store(&t1)
	if code := statusWith(t, srv, http.MethodGet, "/api/state", ck); code != 200 {
		t.Fatalf("a session before its expiry: %d", code)
	}
	t2 := t0.Add(61 * time.Minute)
	now.Store(&t2)
	if code := statusWith(t, srv, http.MethodGet, "/api/state", ck); code != http.StatusUnauthorized {
		t.Fatalf("an expired session: %d", code)
	}
	first := login(t, srv, newTok)
	for range 10 {
		login(t, srv, newTok)
	}
	if n := h.Sessions(); n > 3 {
		t.Fatalf("%d sessions held, bound 3", n)
	}
	if code := statusWith(t, srv, http.MethodGet, "/api/state", first); code != http.StatusUnauthorized {
		t.Fatalf("the oldest session past the bound: %d", code)
	}
}
