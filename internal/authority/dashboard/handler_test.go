package dashboard

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

const testToken = "0123456789abcdef0123456789abcdef-secret"

func testHandler(t *testing.T) (*Handler, *httptest.Server) {
	t.Helper()
	h, err := New(Options{Token: testToken, Interval: 20 * time.Millisecond, MaxStreamsPerClient: 2, MaxStreams: 3,
		State: func(ctx context.Context) State {
			return State{TrustDomain: "secret-td.example.org", Keys: []Key{{Name: "tenant-a/secret-key"}}}
		}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return h, srv
}

func noRedirect() *http.Client {
	return &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }, Timeout: 10 * time.Second}
}

// Every path, without a session or with a wrong one, gets 401 and nothing
// about the authority.
func TestUnauthenticatedGets401AndNothingElse(t *testing.T) {
	_, srv := testHandler(t)
	c := noRedirect()
	paths := []string{"/", "/keys", "/identity", "/policy", "/governance", "/api/state", "/api/events", "/static/dashboard.js", "/static/dashboard.css", "/nope", "/login"}
	creds := map[string]func(*http.Request){
		"none":          func(*http.Request) {},
		"wrong bearer":  func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+strings.Repeat("x", len(testToken))) },
		"wrong cookie":  func(r *http.Request) { r.AddCookie(&http.Cookie{Name: SessionCookie, Value: "forged"}) },
		"token cookie":  func(r *http.Request) { r.AddCookie(&http.Cookie{Name: SessionCookie, Value: testToken}) },
		"empty bearer":  func(r *http.Request) { r.Header.Set("Authorization", "Bearer ") },
		"basic":         func(r *http.Request) { r.SetBasicAuth("admin", testToken) },
		"prefix bearer": func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+testToken[:32]) },
	}
	for name, set := range creds {
		for _, p := range paths {
			req, _ := http.NewRequest(http.MethodGet, srv.URL+p, nil)
			set(req)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s %s: status %d, want 401", name, p, resp.StatusCode)
			}
			for _, leak := range []string{"secret-td", "secret-key", testToken, "EventSource"} {
				if strings.Contains(string(body), leak) {
					t.Errorf("%s %s: the 401 body holds %q", name, p, leak)
				}
			}
			if resp.Header.Get("Content-Security-Policy") != CSP {
				t.Errorf("%s %s: CSP %q", name, p, resp.Header.Get("Content-Security-Policy"))
			}
			if len(resp.Cookies()) != 0 {
				t.Errorf("%s %s: set a cookie", name, p)
			}
		}
	}
	// A wrong token at the login form: 401, no cookie.
	resp, err := c.PostForm(srv.URL+"/login", url.Values{"token": {"wrong"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || len(resp.Cookies()) != 0 {
		t.Errorf("wrong login: %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	// A huge login body is cut off.
	resp, err = c.Post(srv.URL+"/login", "application/x-www-form-urlencoded", strings.NewReader("token="+strings.Repeat("a", 1<<20)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || len(resp.Cookies()) != 0 {
		t.Errorf("huge login: %d", resp.StatusCode)
	}
}

func TestLoginAndPages(t *testing.T) {
	_, srv := testHandler(t)
	c := noRedirect()
	resp, err := c.PostForm(srv.URL+"/login", url.Values{"token": {testToken}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) != 1 {
		t.Fatalf("login: %d %v", resp.StatusCode, resp.Cookies())
	}
	ck := resp.Cookies()[0]
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Value == testToken {
		t.Errorf("session cookie %+v", ck)
	}
	get := func(p string, set func(*http.Request)) (int, string, http.Header) {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+p, nil)
		set(req)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	withCookie := func(r *http.Request) { r.AddCookie(ck) }
	for _, p := range Pages {
		code, body, hd := get(p.Path, withCookie)
		if code != 200 || !strings.Contains(body, `data-page="`+p.Name+`"`) || strings.Contains(body, "<script>") {
			t.Errorf("%s: %d\n%s", p.Path, code, body)
		}
		if hd.Get("X-Frame-Options") != "DENY" || !strings.Contains(hd.Get("Content-Security-Policy"), "script-src 'self'") {
			t.Errorf("%s headers %v", p.Path, hd)
		}
	}
	code, body, _ := get("/api/state", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+testToken) })
	if code != 200 || !strings.Contains(body, "tenant-a/secret-key") {
		t.Errorf("state with bearer: %d %s", code, body)
	}
	// DNS rebinding: another site's name as Host is refused, even with a session.
	code, _, _ = get("/api/state", func(r *http.Request) { r.AddCookie(ck); r.Host = "evil.example:80" })
	if code != http.StatusMisdirectedRequest {
		t.Errorf("foreign Host: %d", code)
	}
}

// Live streams are bounded per client and in all.
func TestEventStreamsBounded(t *testing.T) {
	h, srv := testHandler(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func() (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/api/events", nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		return http.DefaultClient.Do(req)
	}
	var held []*http.Response
	for i := range 2 {
		resp, err := open()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("stream %d: %d", i, resp.StatusCode)
		}
		line, _ := bufio.NewReader(resp.Body).ReadString('\n')
		if line != "event: state\n" {
			t.Fatalf("first line %q", line)
		}
		held = append(held, resp)
	}
	resp, err := open()
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("third stream of one client: %d", resp.StatusCode)
	}
	if h.Streams() != 2 {
		t.Fatalf("streams = %d", h.Streams())
	}
	for _, r := range held {
		r.Body.Close()
	}
	cancel()
	deadline := time.Now().Add(10 * time.Second)
	for h.Streams() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if h.Streams() != 0 {
		t.Fatalf("closed streams still counted: %d", h.Streams())
	}
}

func TestShortTokenRefused(t *testing.T) {
	if _, err := New(Options{Token: "short", State: func(context.Context) State { return State{} }}); err == nil {
		t.Fatal("a short token was accepted")
	}
}

// FuzzUnauthenticated sends requests no one logged in: whatever the
// method, path, cookie or Authorization header, the answer is 401 (or 421
// for a foreign Host) and holds nothing about the authority.
func FuzzUnauthenticated(f *testing.F) {
	h, err := New(Options{Token: testToken, State: func(ctx context.Context) State {
		return State{TrustDomain: "secret-td.example.org"}
	}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("GET", "/api/state", "ward_dashboard=x", "Bearer x", "127.0.0.1")
	f.Add("POST", "/login", "", "", "localhost:1")
	f.Add("GET", "/static/../api/state", "", "Basic YTpi", "[::1]:8300")
	f.Add("HEAD", "//api/events", "ward_dashboard="+testToken, "bearer "+testToken, "127.0.0.1")
	f.Fuzz(func(t *testing.T, method, path, cookie, auth, host string) {
		if strings.Contains(auth, testToken) && strings.HasPrefix(auth, "Bearer "+testToken) && len(auth) == len("Bearer "+testToken) {
			return // the token itself
		}
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Method, r.URL.Path, r.Host = method, path, host
		if cookie != "" {
			r.Header.Set("Cookie", cookie)
		}
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != http.StatusUnauthorized && w.Code != http.StatusMisdirectedRequest {
			t.Fatalf("%s %q Host %q Cookie %q Authorization %q: %d", method, path, host, cookie, auth, w.Code)
		}
		if strings.Contains(w.Body.String(), "secret-td") {
			t.Fatal("the state leaked")
		}
	})
}
