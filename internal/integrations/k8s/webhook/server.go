package webhook

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Handler serves admission reviews: /validate for Namespaces,
// /validate/<classification> for Pods and PVCs in namespaces of that
// classification, /healthz.
type Handler struct {
	rules *Rules
	warn  bool
	log   *slog.Logger
}

// NewHandler returns the webhook's HTTP handler.
func NewHandler(cfg *Config, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Handler{rules: NewRules(cfg), warn: cfg.Mode == "warn", log: log}
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		io.WriteString(w, "ok\n")
		return
	}
	class, isClass := strings.CutPrefix(r.URL.Path, "/validate/")
	if r.URL.Path != "/validate" && !isClass {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/json" {
		http.Error(w, "Content-Type must be application/json", http.StatusUnsupportedMediaType)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			http.Error(w, fmt.Sprintf("admission review larger than %d bytes", MaxBody), http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "reading the request: "+err.Error(), http.StatusBadRequest)
		return
	}
	rev, err := ParseReview(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	req := rev.Request
	var vs []Violation
	if isClass {
		vs, err = h.rules.Classified(class, req)
	} else {
		vs, err = h.rules.Namespaces(req)
	}
	resp := &Response{UID: req.UID, Allowed: true}
	switch {
	case err != nil:
		// A request the webhook cannot judge is refused in both modes.
		resp.Allowed = false
		resp.Status = &Status{Code: http.StatusBadRequest, Reason: "BadRequest", Message: "ward webhook: " + err.Error()}
	case len(vs) > 0 && h.warn:
		for _, v := range vs {
			resp.Warnings = append(resp.Warnings, "ward webhook (warn mode, would deny): "+v.Message)
		}
	case len(vs) > 0:
		msgs := make([]string, len(vs))
		for i, v := range vs {
			msgs[i] = v.Message
		}
		resp.Allowed = false
		resp.Status = &Status{Code: http.StatusForbidden, Reason: "Forbidden", Message: "ward webhook: " + strings.Join(msgs, "; ")}
	}
	rules := make([]string, 0, len(vs))
	for _, v := range vs {
		if !slices.Contains(rules, v.Rule) {
			rules = append(rules, v.Rule)
		}
	}
	h.log.Info("admission", "uid", req.UID, "kind", req.Kind.Kind, "namespace", req.Namespace, "name", req.Name,
		"operation", req.Operation, "allowed", resp.Allowed, "broken_rules", strings.Join(rules, ","), "error", errString(err))
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(&Review{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview", Response: resp})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// SVIDSource is what the server needs from the Workload API: the current
// X509-SVID (*workloadapi.X509Source is one).
type SVIDSource interface {
	GetX509SVID() (*x509svid.SVID, error)
}

// TLSConfig serves src's current SVID (chain included) on every handshake,
// so rotations apply without a restart. The apiserver verifies it against
// the caBundle (ward's trust bundle) and the Service's DNS name.
func TLSConfig(src SVIDSource) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			sv, err := src.GetX509SVID()
			if err != nil {
				return nil, err
			}
			c := &tls.Certificate{PrivateKey: sv.PrivateKey, Leaf: sv.Certificates[0]}
			for _, x := range sv.Certificates {
				c.Certificate = append(c.Certificate, x.Raw)
			}
			return c, nil
		},
	}
}

// CheckSVID says whether the SVID names dnsName as a DNS SAN.
func CheckSVID(src SVIDSource, dnsName string) error {
	sv, err := src.GetX509SVID()
	if err != nil {
		return fmt.Errorf("the webhook's SVID: %w", err)
	}
	if err := sv.Certificates[0].VerifyHostname(dnsName); err != nil {
		return fmt.Errorf("the webhook's SVID (%s) does not name %s as a DNS SAN (has %v): add it to the entry (ward entry update ID --dns %s)", sv.ID, dnsName, sv.Certificates[0].DNSNames, dnsName)
	}
	return nil
}

// Reviews in flight: the port is reachable before any authentication (the
// apiserver presents no client certificate), and each review may buffer
// MaxBody bytes, so one source may hold MaxInFlightPerSource of them and
// all together MaxInFlight; past that the answer is 503 at once.
const (
	MaxInFlight          = 32
	MaxInFlightPerSource = 8
)

// limitInFlight bounds the requests h serves at once, per source host and
// in all.
func limitInFlight(h http.Handler) http.Handler {
	var mu sync.Mutex
	total, per := 0, map[string]int{}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		src, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			src = r.RemoteAddr
		}
		mu.Lock()
		if total >= MaxInFlight || per[src] >= MaxInFlightPerSource {
			mu.Unlock()
			http.Error(w, "too many admission reviews in flight; retry", http.StatusServiceUnavailable)
			return
		}
		total++
		per[src]++
		mu.Unlock()
		defer func() {
			mu.Lock()
			total--
			if per[src]--; per[src] == 0 {
				delete(per, src)
			}
			mu.Unlock()
		}()
		h.ServeHTTP(w, r)
	})
}

// Serve serves h over TLS on ln until ctx ends, then shuts down gracefully.
// HTTP/2 is off: the apiserver speaks HTTP/1.1 to webhooks, and HTTP/2's
// many streams per connection would multiply what one connection buffers.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, tc *tls.Config) error {
	srv := &http.Server{
		Handler:           limitInFlight(h),
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
		TLSConfig:         tc,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	}
}
