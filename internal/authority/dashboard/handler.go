package dashboard

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

//go:embed static
var static embed.FS

// Pages are the dashboard's pages: path, title.
var Pages = []struct{ Path, Name, Title string }{
	{"/", "overview", "Overview"},
	{"/identity", "identity", "Identity"},
	{"/keys", "keys", "Keys"},
	{"/policy", "policy", "Policy"},
	{"/governance", "governance", "Drift & anomalies"},
}

// Options configure the handler.
type Options struct {
	// Token authenticates the operator (at least 32 characters).
	Token string
	// State builds a snapshot; it is called at most once per Interval,
	// whatever the number of viewers.
	State func(ctx context.Context) State
	// Interval between snapshots pushed to open pages (default 1s).
	Interval time.Duration
	// MaxStreamsPerClient bounds the live streams of one client address
	// (default 4); MaxStreams all of them (default 32).
	MaxStreamsPerClient int
	MaxStreams          int
	Log                 *slog.Logger
	// SessionTTL is how long a login lasts (default 12h); MaxSessions
	// bounds the sessions held (default 64: a new login beyond ends the
	// oldest).
	SessionTTL  time.Duration
	MaxSessions int
	// Clock returns the current time (default time.Now).
	Clock func() time.Time
}

// SessionCookie is the name of the dashboard's session cookie.
const SessionCookie = "ward_dashboard"

// CSP is the Content-Security-Policy of every response: scripts, styles
// and connections from the dashboard's own origin only, no inline script,
// no frames, no form posts elsewhere.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// Handler is the dashboard.
type Handler struct {
	opts  Options
	mux   *http.ServeMux
	page  *template.Template
	login []byte

	mu      sync.Mutex
	streams map[string]int
	total   int

	// Sessions live here only: a login gets a random cookie value, kept
	// as its SHA-256 with its expiry; logout, expiry and a token change
	// (SetToken) end them.
	sessMu   sync.Mutex
	token    string
	sessions map[[32]byte]session
	sessSeq  uint64

	snapMu   sync.Mutex
	snapAt   time.Time
	snapJSON []byte
}

// New builds the handler.
func New(opts Options) (*Handler, error) {
	if len(opts.Token) < 32 {
		return nil, fmt.Errorf("the dashboard token must be at least 32 characters")
	}
	if opts.Interval <= 0 {
		opts.Interval = time.Second
	}
	if opts.MaxStreamsPerClient <= 0 {
		opts.MaxStreamsPerClient = 4
	}
	if opts.MaxStreams <= 0 {
		opts.MaxStreams = 32
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.SessionTTL <= 0 {
		opts.SessionTTL = 12 * time.Hour
	}
	if opts.MaxSessions <= 0 {
		opts.MaxSessions = 64
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	h := &Handler{opts: opts, streams: map[string]int{}, token: opts.Token, sessions: map[[32]byte]session{}}
	pageSrc, err := static.ReadFile("static/page.html")
	if err != nil {
		return nil, err
	}
	if h.page, err = template.New("page").Parse(string(pageSrc)); err != nil {
		return nil, err
	}
	if h.login, err = static.ReadFile("static/login.html"); err != nil {
		return nil, err
	}
	h.mux = http.NewServeMux()
	for _, p := range Pages {
		pattern := "GET " + p.Path
		if p.Path == "/" {
			pattern = "GET /{$}"
		}
		h.mux.HandleFunc(pattern, h.servePage(p.Name, p.Title))
	}
	h.mux.HandleFunc("GET /static/dashboard.js", h.serveStatic("static/dashboard.js", "text/javascript; charset=utf-8"))
	h.mux.HandleFunc("GET /static/dashboard.css", h.serveStatic("static/dashboard.css", "text/css; charset=utf-8"))
	h.mux.HandleFunc("GET /api/state", h.serveState)
	h.mux.HandleFunc("GET /api/events", h.serveEvents)
	h.mux.HandleFunc("POST /logout", h.serveLogout)
	return h, nil
}

// ServeHTTP checks the Host, the session, then routes.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", CSP)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Cache-Control", "no-store")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
	hd.Set("Cross-Origin-Resource-Policy", "same-origin")
	// A page of another site that rebinds its name to 127.0.0.1 sends its
	// own name as Host: refuse it (it has no session cookie either).
	if !loopbackHost(r.Host) {
		http.Error(w, "the dashboard answers only to localhost or a loopback address", http.StatusMisdirectedRequest)
		return
	}
	if r.Method == http.MethodPost && r.URL.Path == "/login" {
		h.serveLogin(w, r)
		return
	}
	if !h.authenticated(r) {
		h.unauthorized(w, r)
		return
	}
	h.mux.ServeHTTP(w, r)
}

func loopbackHost(hostport string) bool {
	host := hostport
	if hh, _, err := net.SplitHostPort(hostport); err == nil {
		host = hh
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (h *Handler) authenticated(r *http.Request) bool {
	if auth, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return h.tokenMatches(auth)
	}
	c, err := r.Cookie(SessionCookie)
	if err != nil {
		return false
	}
	k := sha256.Sum256([]byte(c.Value))
	h.sessMu.Lock()
	defer h.sessMu.Unlock()
	se, ok := h.sessions[k]
	if ok && !h.opts.Clock().Before(se.expires) {
		delete(h.sessions, k)
		return false
	}
	return ok
}

func (h *Handler) tokenMatches(tok string) bool {
	h.sessMu.Lock()
	cur := h.token
	h.sessMu.Unlock()
	return cur != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(cur)) == 1
}

// newSession records a new random session and returns its cookie value.
// The table is bounded: expired sessions go first, then the oldest.
func (h *Handler) newSession() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	v := base64.RawURLEncoding.EncodeToString(b[:])
	now := h.opts.Clock()
	h.sessMu.Lock()
	defer h.sessMu.Unlock()
	for len(h.sessions) >= h.opts.MaxSessions {
		var oldest [32]byte
		seq := uint64(0)
		for k, se := range h.sessions {
			if !now.Before(se.expires) {
				delete(h.sessions, k)
				continue
			}
			if seq == 0 || se.seq < seq {
				oldest, seq = k, se.seq
			}
		}
		if len(h.sessions) >= h.opts.MaxSessions {
			delete(h.sessions, oldest)
		}
	}
	h.sessSeq++
	h.sessions[sha256.Sum256([]byte(v))] = session{expires: now.Add(h.opts.SessionTTL), seq: h.sessSeq}
	return v, nil
}

type session struct {
	expires time.Time
	seq     uint64 // login order: the oldest goes first past MaxSessions
}

// Sessions returns how many sessions are held.
func (h *Handler) Sessions() int {
	h.sessMu.Lock()
	defer h.sessMu.Unlock()
	return len(h.sessions)
}

// SetToken replaces the token (the token file changed; "" refuses every
// login): when it differs, every session ends.
func (h *Handler) SetToken(tok string) {
	h.sessMu.Lock()
	defer h.sessMu.Unlock()
	if tok == h.token {
		return
	}
	h.token = tok
	clear(h.sessions)
	h.opts.Log.Warn("dashboard token changed: every session ended")
}

// unauthorized answers 401 with the static login form (pages) or a short
// text (everything else): nothing about the authority.
func (h *Handler) unauthorized(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="ward dashboard"`)
	if r.Method == http.MethodGet && !strings.HasPrefix(r.URL.Path, "/api/") && !strings.HasPrefix(r.URL.Path, "/static/") {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
		w.Write(h.login)
		return
	}
	http.Error(w, "unauthorized: log in to the dashboard with its token", http.StatusUnauthorized)
}

func (h *Handler) serveLogin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	if err := r.ParseForm(); err != nil {
		h.unauthorized(w, r)
		return
	}
	tok := strings.TrimSpace(r.PostForm.Get("token"))
	if !h.tokenMatches(tok) {
		h.opts.Log.Warn("dashboard login refused: wrong token", "remote", r.RemoteAddr)
		r.Method = http.MethodGet // answer with the form
		h.unauthorized(w, r)
		return
	}
	sess, err := h.newSession()
	if err != nil {
		http.Error(w, "no session: "+err.Error(), http.StatusInternalServerError)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: sess, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
		MaxAge: int(h.opts.SessionTTL / time.Second)})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (h *Handler) serveLogout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(SessionCookie); err == nil {
		k := sha256.Sum256([]byte(c.Value))
		h.sessMu.Lock()
		delete(h.sessions, k) // the cookie is dead server-side, wherever a copy is
		h.sessMu.Unlock()
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (h *Handler) servePage(name, title string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var buf bytes.Buffer
		if err := h.page.Execute(&buf, map[string]any{"Page": name, "Title": title, "Pages": Pages}); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(buf.Bytes())
	}
}

func (h *Handler) serveStatic(name, ctype string) http.HandlerFunc {
	b, err := static.ReadFile(name)
	if err != nil {
		panic(err)
	}
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", ctype)
		w.Write(b)
	}
}

// snapshot returns the JSON of a State at most Interval old.
func (h *Handler) snapshot(ctx context.Context) []byte {
	h.snapMu.Lock()
	defer h.snapMu.Unlock()
	if h.snapJSON != nil && time.Since(h.snapAt) < h.opts.Interval {
		return h.snapJSON
	}
	// Not the request's context: the snapshot is shared, and a viewer who
	// leaves must not cut it short for the others.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	st := h.opts.State(ctx)
	b, err := json.Marshal(st)
	if err != nil {
		b = []byte(`{"errors":["encoding the state failed"]}`)
	}
	h.snapJSON, h.snapAt = b, time.Now()
	return b
}

func (h *Handler) serveState(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Write(h.snapshot(r.Context()))
}

func clientOf(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// acquire takes a live stream slot for client, or reports it is over a
// bound.
func (h *Handler) acquire(client string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.total >= h.opts.MaxStreams || h.streams[client] >= h.opts.MaxStreamsPerClient {
		return false
	}
	h.total++
	h.streams[client]++
	return true
}

func (h *Handler) release(client string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.total--
	if h.streams[client]--; h.streams[client] <= 0 {
		delete(h.streams, client)
	}
}

// Streams is the number of open live streams.
func (h *Handler) Streams() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.total
}

// serveEvents streams the state as Server-Sent Events: at once, then
// whenever it changes (checked every Interval), with a comment every 15 s
// to keep idle connections open.
func (h *Handler) serveEvents(w http.ResponseWriter, r *http.Request) {
	client := clientOf(r)
	if !h.acquire(client) {
		w.Header().Set("Retry-After", "10")
		http.Error(w, fmt.Sprintf("too many live dashboard streams (at most %d per client, %d in all): close other dashboard tabs", h.opts.MaxStreamsPerClient, h.opts.MaxStreams), http.StatusTooManyRequests)
		return
	}
	defer h.release(client)
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	var last []byte
	tick := time.NewTicker(h.opts.Interval)
	defer tick.Stop()
	idle := time.Now()
	for {
		b := h.snapshot(r.Context())
		if !bytes.Equal(b, last) {
			rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := fmt.Fprintf(w, "event: state\ndata: %s\n\n", b); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
			last, idle = b, time.Now()
		} else if time.Since(idle) > 15*time.Second {
			rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil || rc.Flush() != nil {
				return
			}
			idle = time.Now()
		}
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
		}
	}
}

// NewToken returns a random dashboard token (hex of 32 bytes).
func NewToken(random func([]byte) (int, error)) (string, error) {
	b := make([]byte, 32)
	if _, err := random(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}
