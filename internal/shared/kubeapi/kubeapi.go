// Package kubeapi is the little of the Kubernetes API that the authority
// (TokenReview, for k8s_psat node attestation) and the agent (a watch of
// the pods on its node, for the k8s workload attestor) need: plain HTTPS
// and JSON with a bearer token, every response read through a bound, so
// ward's own module carries no client-go. The bearer token is read from
// its file at every request (projected tokens rotate).
package kubeapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// The files a pod's default service-account volume holds.
const (
	InClusterTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	InClusterCAFile    = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
)

// Config names an apiserver and the credentials to call it with. Empty
// fields take the in-cluster values: the URL from $KUBERNETES_SERVICE_HOST
// and $KUBERNETES_SERVICE_PORT, the CA and token from the pod's
// service-account volume.
type Config struct {
	URL       string
	CAFile    string
	TokenFile string
}

// Client calls one apiserver.
type Client struct {
	base      *url.URL
	tokenFile string
	hc        *http.Client
}

const maxTokenFile = 64 << 10

// New checks c and prepares a client (nothing is contacted).
func New(c Config) (*Client, error) {
	if c.URL == "" {
		host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
		if host == "" || port == "" {
			return nil, errors.New("no apiserver URL configured and not running in a pod ($KUBERNETES_SERVICE_HOST unset): set the apiserver URL")
		}
		c.URL = "https://" + net.JoinHostPort(host, port)
	}
	if c.CAFile == "" {
		c.CAFile = InClusterCAFile
	}
	if c.TokenFile == "" {
		c.TokenFile = InClusterTokenFile
	}
	u, err := url.Parse(c.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("apiserver URL %q: use https://host[:port]", c.URL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	pemCA, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, fmt.Errorf("apiserver CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemCA) {
		return nil, fmt.Errorf("apiserver CA %s holds no PEM certificate", c.CAFile)
	}
	tr := &http.Transport{
		TLSClientConfig:       &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
	}
	cl := &Client{base: u, tokenFile: c.TokenFile, hc: &http.Client{Transport: tr}}
	if _, err := cl.token(); err != nil {
		return nil, err
	}
	return cl, nil
}

// URL is the apiserver's base URL.
func (c *Client) URL() string { return c.base.String() }

func (c *Client) token() (string, error) {
	f, err := os.Open(c.tokenFile)
	if err != nil {
		return "", fmt.Errorf("apiserver token: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return "", fmt.Errorf("apiserver token %s: %w", c.tokenFile, err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" || len(b) > maxTokenFile || strings.ContainsAny(t, "\r\n") {
		return "", fmt.Errorf("apiserver token %s: empty, longer than %d bytes or several lines: give one bearer token", c.tokenFile, maxTokenFile)
	}
	return t, nil
}

// StatusError is a non-2xx answer, with the message of the apiserver's
// Status object when it sent one.
type StatusError struct {
	Code    int
	Reason  string
	Message string
}

func (e *StatusError) Error() string {
	m := e.Message
	if m == "" {
		m = http.StatusText(e.Code)
	}
	return fmt.Sprintf("apiserver answered %d %s: %s", e.Code, e.Reason, m)
}

// IsStatus reports whether err is a StatusError with code.
func IsStatus(err error, code int) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == code
}

func (c *Client) request(ctx context.Context, method, path string, q url.Values, in any) (*http.Response, error) {
	tok, err := c.token()
	if err != nil {
		return nil, err
	}
	u := *c.base
	u.Path += path
	u.RawQuery = q.Encode()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("apiserver %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		se := &StatusError{Code: resp.StatusCode}
		var st struct {
			Reason  string `json:"reason"`
			Message string `json:"message"`
		}
		if json.Unmarshal(b, &st) == nil {
			se.Reason, se.Message = st.Reason, st.Message
		}
		return nil, fmt.Errorf("apiserver %s %s: %w", method, path, se)
	}
	return resp, nil
}

// ErrTooLarge is returned when a response exceeds its bound.
var ErrTooLarge = errors.New("apiserver response larger than its bound")

// Do sends in (JSON, nil for none) and decodes the answer into out,
// reading at most limit bytes of it. Without a deadline in ctx, the call
// is bounded to 30 s.
func (c *Client) Do(ctx context.Context, method, path string, q url.Values, in, out any, limit int64) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	resp, err := c.request(ctx, method, path, q, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return fmt.Errorf("apiserver %s %s: reading the answer: %w", method, path, err)
	}
	if int64(len(b)) > limit {
		return fmt.Errorf("apiserver %s %s: %w (%d bytes)", method, path, ErrTooLarge, limit)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("apiserver %s %s: the answer is not the expected JSON: %w", method, path, err)
	}
	return nil
}

// Stream opens a long-lived GET (a watch) and returns its body; the caller
// reads it with a bounded decoder (EventDecoder) and closes it.
func (c *Client) Stream(ctx context.Context, path string, q url.Values) (io.ReadCloser, error) {
	resp, err := c.request(ctx, http.MethodGet, path, q, nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// EventDecoder reads the JSON objects of a watch stream one at a time,
// none larger than its bound.
type EventDecoder struct {
	lr  *limitedReader
	dec *json.Decoder
	max int64
}

type limitedReader struct {
	r    io.Reader
	left int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, ErrTooLarge
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

// NewEventDecoder decodes r with at most max bytes read per object (the
// decoder's read-ahead counts too, so give max some room above the
// largest object expected).
func NewEventDecoder(r io.Reader, max int64) *EventDecoder {
	lr := &limitedReader{r: r, left: max}
	return &EventDecoder{lr: lr, dec: json.NewDecoder(lr), max: max}
}

// Decode reads the next object into v.
func (d *EventDecoder) Decode(v any) error {
	d.lr.left = d.max
	if err := d.dec.Decode(v); err != nil {
		if errors.Is(err, ErrTooLarge) {
			return fmt.Errorf("watch event: %w (%d bytes)", ErrTooLarge, d.max)
		}
		return err
	}
	return nil
}

// TokenReviewStatus is what the apiserver's TokenReview answers.
type TokenReviewStatus struct {
	Authenticated bool `json:"authenticated"`
	User          struct {
		Username string              `json:"username"`
		UID      string              `json:"uid"`
		Groups   []string            `json:"groups"`
		Extra    map[string][]string `json:"extra"`
	} `json:"user"`
	Audiences []string `json:"audiences"`
	Error     string   `json:"error"`
}

// ReviewToken asks the apiserver (authentication.k8s.io/v1 TokenReview)
// whether token is valid for audiences. The caller's credentials need
// create on tokenreviews (system:auth-delegator).
func (c *Client) ReviewToken(ctx context.Context, token string, audiences []string) (TokenReviewStatus, error) {
	in := map[string]any{
		"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
		"spec": map[string]any{"token": token, "audiences": audiences},
	}
	var out struct {
		Status TokenReviewStatus `json:"status"`
	}
	if err := c.Do(ctx, http.MethodPost, "/apis/authentication.k8s.io/v1/tokenreviews", nil, in, &out, 1<<20); err != nil {
		return TokenReviewStatus{}, err
	}
	return out.Status, nil
}
