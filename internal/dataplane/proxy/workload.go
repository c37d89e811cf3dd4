package proxy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	gsw "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wardproject/ward/internal/shared/reconnect"
)

// DefaultWaitDiagnosis is how long the proxy waits for its first X509-SVID
// before it says what is missing (and then again every waitRepeat while
// the reason stays the same).
const (
	DefaultWaitDiagnosis = 3 * time.Second
	waitRepeat           = 30 * time.Second
)

// svidPicker chooses the proxy's SVID among those the Workload API offers
// (spiffe_id and svid_hint in the config; the first one when neither is
// set) and remembers what was offered, to say why none fits.
type svidPicker struct {
	want spiffeid.ID
	hint string

	mu      sync.Mutex
	seen    bool     // an update arrived
	found   bool     // the last update held a fitting SVID
	offered []string // "ID (hint H)" of the last update
}

func (k *svidPicker) pick(svids []*x509svid.SVID) *x509svid.SVID {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.seen = true
	k.offered = k.offered[:0]
	var found *x509svid.SVID
	for _, s := range svids {
		d := s.ID.String()
		if s.Hint != "" {
			d += " (hint " + s.Hint + ")"
		}
		k.offered = append(k.offered, d)
		if found == nil && (k.want.IsZero() || s.ID == k.want) && (k.hint == "" || s.Hint == k.hint) {
			found = s
		}
	}
	k.found = found != nil
	return found
}

// missing says why no offered SVID fits, or "" if nothing was offered yet.
func (k *svidPicker) missing() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.seen || k.found {
		return ""
	}
	var want []string
	if !k.want.IsZero() {
		want = append(want, "spiffe_id "+k.want.String())
	}
	if k.hint != "" {
		want = append(want, "svid_hint "+k.hint)
	}
	return fmt.Sprintf("the agent has no X509-SVID with %s for this proxy; it offers: %s "+
		"(correct spiffe_id/svid_hint in the proxy config, or register an entry with that SPIFFE ID whose selectors match this proxy)",
		strings.Join(want, " and "), strings.Join(k.offered, ", "))
}

// pickedSource is the Workload API source with the configured SVID picked.
type pickedSource struct {
	*gsw.X509Source
	picker *svidPicker
}

// GetX509SVID returns the picked SVID, or says why there is none.
func (s *pickedSource) GetX509SVID() (*x509svid.SVID, error) {
	sv, err := s.X509Source.GetX509SVID()
	if err != nil {
		if m := s.picker.missing(); m != "" {
			return nil, errors.New(m)
		}
		return nil, err
	}
	return sv, nil
}

// connectWorkloadAPI opens the Workload API source and waits for an SVID
// that fits spiffe_id and svid_hint. While it waits it says what is
// missing after waitDiagnosis: no socket, nothing listening, the agent's
// refusal (it names the selectors this proxy attested as), or the SVIDs
// the agent offers when none fits.
func (p *Proxy) connectWorkloadAPI(ctx context.Context) (*pickedSource, error) {
	addr := p.cfg.WorkloadAPISocket
	if !strings.Contains(addr, "://") {
		addr = "unix://" + addr
	}
	picker := &svidPicker{hint: p.cfg.SVIDHint}
	if p.cfg.SPIFFEID != "" {
		picker.want = spiffeid.RequireFromString(p.cfg.SPIFFEID) // checked by Validate
	}
	attrs := []any{"socket", addr}
	if p.cfg.SPIFFEID != "" {
		attrs = append(attrs, "spiffe_id", p.cfg.SPIFFEID)
	}
	if p.cfg.SVIDHint != "" {
		attrs = append(attrs, "svid_hint", p.cfg.SVIDHint)
	}
	p.log.Info("waiting for an X509-SVID from the Workload API", attrs...)

	diagCtx, stopDiag := context.WithCancel(ctx)
	var diagWG sync.WaitGroup
	diagWG.Add(1)
	go func() { defer diagWG.Done(); p.diagnoseWait(diagCtx, addr, picker) }()
	defer func() { stopDiag(); diagWG.Wait(); p.waitReason.Store(nil) }()

	xs, err := gsw.NewX509Source(ctx, gsw.WithClientOptions(append(reconnect.WorkloadAPI(), gsw.WithAddr(addr))...), gsw.WithDefaultX509SVIDPicker(picker.pick))
	if err != nil {
		why := p.waitReasonText()
		if why == "" {
			why = "is the ward agent running, and does an entry match this proxy?"
		}
		return nil, fmt.Errorf("workload API %s: %w (%s)", addr, err, why)
	}
	src := &pickedSource{X509Source: xs, picker: picker}
	for {
		if _, err := src.GetX509SVID(); err == nil {
			return src, nil
		}
		select {
		case <-xs.Updated():
		case <-ctx.Done():
			xs.Close()
			return nil, fmt.Errorf("workload API %s: %w (%s)", addr, ctx.Err(), picker.missing())
		}
	}
}

// diagnoseWait logs why no SVID has arrived yet, first after
// waitDiagnosis, then whenever the reason changes or every waitRepeat,
// and keeps it for /readyz.
func (p *Proxy) diagnoseWait(ctx context.Context, addr string, picker *svidPicker) {
	delay := p.waitDiagnosis
	if delay <= 0 {
		delay = DefaultWaitDiagnosis
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	var last string
	var lastAt time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		why := diagnoseWorkloadAPI(ctx, addr, picker)
		if ctx.Err() != nil {
			return
		}
		if why != "" {
			p.waitReason.Store(&why)
			if why != last || time.Since(lastAt) >= waitRepeat {
				p.log.Warn("still no X509-SVID from the Workload API", "socket", addr, "reason", why)
				last, lastAt = why, time.Now()
			}
		}
		t.Reset(delay)
	}
}

// diagnoseWorkloadAPI says what keeps the proxy from an SVID.
func diagnoseWorkloadAPI(ctx context.Context, addr string, picker *svidPicker) string {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		fi, err := os.Stat(path)
		switch {
		case errors.Is(err, os.ErrNotExist):
			return fmt.Sprintf("no Workload API socket at %s: is the ward agent running, and is workload_api_socket the agent's socket_path?", path)
		case err != nil:
			return fmt.Sprintf("Workload API socket %s: %v", path, err)
		case fi.Mode()&os.ModeSocket == 0:
			return fmt.Sprintf("%s is not a socket: set workload_api_socket to the agent's socket_path", path)
		}
	}
	if m := picker.missing(); m != "" {
		return m
	}
	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := gsw.FetchX509Context(fctx, gsw.WithAddr(addr))
	if err == nil {
		return ""
	}
	st := status.Convert(err)
	switch {
	case st.Code() == codes.PermissionDenied:
		return "the agent refused this proxy: " + st.Message()
	case strings.Contains(err.Error(), "connection refused"):
		return fmt.Sprintf("nothing listens on %s (a socket left by an agent that is not running?)", addr)
	case st.Code() == codes.Unavailable:
		return "the agent has no X509-SVID for this proxy yet: " + st.Message()
	}
	return "Workload API: " + err.Error()
}

func (p *Proxy) waitReasonText() string {
	if r := p.waitReason.Load(); r != nil {
		return *r
	}
	return ""
}
