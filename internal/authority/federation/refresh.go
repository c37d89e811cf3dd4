package federation

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/errs"
)

// fetch GETs the bundle of e's trust domain from its endpoint. It does what
// go-spiffe's federation.FetchBundle does (the same TLS configuration for
// https_spiffe: the endpoint must present e.rel.EndpointID, verified with
// the trust domain's own last good bundle and nothing else), and also checks
// the HTTP status and bounds the body to MaxBundleSize, which FetchBundle
// does not.
func (m *Manager) fetch(ctx context.Context, e *entry) (*spiffebundle.Bundle, error) {
	var tc *tls.Config
	switch e.rel.Profile {
	case ProfileSPIFFE:
		if e.bundle == nil {
			return nil, fmt.Errorf("no bundle of %s to authenticate its endpoint with; remove and add the relationship with a bootstrap bundle", e.rel.TrustDomain)
		}
		tc = tlsconfig.TLSClientConfig(e.bundle, tlsconfig.AuthorizeID(e.rel.EndpointID))
	case ProfileWeb:
		tc = &tls.Config{RootCAs: m.opts.WebRoots, MinVersion: tls.VersionTLS12}
	default:
		return nil, fmt.Errorf("profile %q", e.rel.Profile)
	}
	client := &http.Client{
		Transport: &http.Transport{TLSClientConfig: tc, Proxy: http.ProxyFromEnvironment, DisableKeepAlives: true,
			TLSHandshakeTimeout: m.opts.FetchTimeout, ForceAttemptHTTP2: true},
		Timeout: m.opts.FetchTimeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if req.URL.Scheme != "https" || len(via) >= 3 {
				return fmt.Errorf("refusing redirect to %s", req.URL.Redacted())
			}
			return nil
		},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.rel.EndpointURL, http.NoBody)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		if e.rel.Profile == ProfileSPIFFE && strings.Contains(err.Error(), "x509svid: could not verify") {
			return nil, fmt.Errorf("fetching the bundle of %s: the endpoint's certificate does not chain to the last good bundle of %s (were its roots replaced at once rather than prepared ahead? then remove the relationship and add it again with a fresh bootstrap bundle): %w",
				e.rel.TrustDomain, e.rel.TrustDomain, err)
		}
		return nil, fmt.Errorf("fetching the bundle of %s: %w", e.rel.TrustDomain, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBundleSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading the bundle of %s from %s: %w", e.rel.TrustDomain, e.rel.EndpointURL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("bundle endpoint %s of %s answered %s: %.200q", e.rel.EndpointURL, e.rel.TrustDomain, resp.Status, strings.TrimSpace(string(body)))
	}
	return ParseBundle(e.rel.TrustDomain, body)
}

func (m *Manager) tdLock(td spiffeid.TrustDomain) *sync.Mutex {
	m.mu.Lock()
	defer m.mu.Unlock()
	l, ok := m.refreshing[td]
	if !ok {
		l = &sync.Mutex{}
		m.refreshing[td] = l
	}
	return l
}

// Refresh fetches td's bundle now, whatever its schedule. It is audited. A
// fetch that fails or is refused keeps the last good bundle and returns the
// error alongside the status.
func (m *Manager) Refresh(ctx context.Context, td spiffeid.TrustDomain) (Status, error) {
	st, err := m.refresh(ctx, td, true)
	switch {
	case err == nil || errs.KindOf(err) != errs.Unknown:
		return st, err
	case errors.Is(err, ErrRefused):
		return st, errs.Wrap(errs.Precondition, err, "")
	default:
		return st, errs.Wrap(errs.Unavailable, err, "")
	}
}

// RefreshDue refreshes every relationship whose next refresh is due and
// returns when the next one is (zero when there is none).
func (m *Manager) RefreshDue(ctx context.Context) time.Time {
	var next time.Time
	for _, st := range m.List() {
		if ctx.Err() != nil {
			return next
		}
		due := st.NextRefresh
		if !due.After(m.opts.Clock()) {
			nst, _ := m.refresh(ctx, st.TrustDomain, false)
			due = nst.NextRefresh
		}
		if !due.IsZero() && (next.IsZero() || due.Before(next)) {
			next = due
		}
	}
	return next
}

// Run refreshes bundles on their schedule until ctx ends, re-reading the
// store at least every MinRefresh (relationships added or refreshed by
// another authority sharing it).
func (m *Manager) Run(ctx context.Context) {
	for {
		if err := m.Reload(ctx); err != nil && ctx.Err() == nil {
			m.opts.Log.Warn("federation: re-reading relationships", "err", err)
		}
		next := m.RefreshDue(ctx)
		wait := m.opts.MinRefresh
		if !next.IsZero() {
			wait = min(wait, max(next.Sub(m.opts.Clock()), time.Second))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-m.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// kick wakes Run (a relationship was added or changed).
func (m *Manager) kick() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

func (m *Manager) backoff(e *entry, failures int) time.Duration {
	d := m.opts.MinRefresh
	h := m.hint(e.bundle)
	for i := 1; i < failures && d < h; i++ {
		d *= 2
	}
	return min(d, h)
}

func (m *Manager) refresh(ctx context.Context, td spiffeid.TrustDomain, manual bool) (Status, error) {
	l := m.tdLock(td)
	l.Lock()
	defer l.Unlock()
	e, ok := m.get(td)
	if !ok {
		return Status{}, errs.Errorf(errs.NotFound, "%w %s", ErrNotFound, td)
	}
	fctx, cancel := context.WithTimeout(ctx, m.opts.FetchTimeout)
	b, ferr := m.fetch(fctx, e)
	cancel()
	if ferr == nil {
		ferr = CheckUpdate(e.bundle, b)
	}
	now := m.opts.Clock().UTC()
	rec := e.rec
	rec.LastAttempt = now
	changed := false
	fields := map[string]string{"trust_domain": td.Name(), "trigger": "scheduled"}
	if manual {
		fields["trigger"] = "manual"
	}
	if e.bundle != nil {
		if s, ok := e.bundle.SequenceNumber(); ok {
			fields["previous_sequence"] = strconv.FormatUint(s, 10)
		}
	}
	if ferr == nil {
		changed = e.bundle == nil || !e.bundle.Equal(b)
		if changed {
			doc, err := b.Marshal()
			if err != nil {
				ferr = fmt.Errorf("%w: encoding the bundle of %s: %v", ErrRefused, td, err)
			} else {
				rec.Bundle = doc
			}
		}
	}
	if ferr == nil {
		rec.LastRefresh, rec.LastError, rec.Failures = now, "", 0
		rec.NextRefresh = now.Add(m.hint(b))
		if s, ok := b.SequenceNumber(); ok {
			fields["sequence"] = strconv.FormatUint(s, 10)
		}
		fields["changed"] = strconv.FormatBool(changed)
	} else {
		rec.LastError, rec.Failures = ferr.Error(), rec.Failures+1
		rec.NextRefresh = now.Add(m.backoff(e, rec.Failures))
		b = e.bundle
	}
	// Audit what an operator asked for, every change of a trust anchor, and
	// each new reason a bundle was refused (not every retry of an outage).
	if manual || changed || (errors.Is(ferr, ErrRefused) && ferr.Error() != e.rec.LastError) {
		ev := m.event(ctx, "federation.refresh", audit.ResultOK, fields)
		if ferr != nil {
			ev.Result, ev.Error = audit.ResultError, ferr.Error()
			if errors.Is(ferr, ErrRefused) {
				ev.Result = audit.ResultDenied
			}
		}
		if err := m.opts.Audit.Record(ctx, ev); err != nil && changed {
			// Fail closed: a trust anchor change that is not in the audit
			// log is not installed; retry soon.
			ferr = errs.Errorf(errs.Unavailable, "%w: audit log unavailable, the new bundle of %s is not installed: %v", ErrUnavailable, td, err)
			rec = e.rec
			rec.LastAttempt, rec.LastError, rec.Failures = now, ferr.Error(), e.rec.Failures+1
			rec.NextRefresh = now.Add(m.backoff(e, rec.Failures))
			b, changed = e.bundle, false
		}
	}
	ne, err := m.write(ctx, rec, e.rev, b, e.rel)
	if err != nil {
		if errors.Is(err, store.ErrConflict) {
			// Another authority sharing the store refreshed or changed it:
			// take its version.
			if rerr := m.Reload(ctx); rerr != nil {
				return Status{}, rerr
			}
			if ne, ok = m.get(td); !ok {
				return Status{}, errs.Errorf(errs.NotFound, "%w %s (removed meanwhile)", ErrNotFound, td)
			}
			return m.status(ne, now), ferr
		}
		return m.status(e, now), errs.Errorf(errs.Unavailable, "%w: storing the refresh of %s: %v (fetch result: %v)", ErrUnavailable, td, err, ferr)
	}
	m.count(td, ferr)
	switch {
	case ferr != nil:
		m.opts.Log.Warn("federation: refresh failed; keeping the last good bundle", "trust_domain", td.Name(), "err", ferr,
			"failures", rec.Failures, "next", rec.NextRefresh)
	case changed:
		m.opts.Log.Info("federation: new bundle", "trust_domain", td.Name(), "sequence", fields["sequence"], "previous", fields["previous_sequence"])
	}
	return m.status(ne, now), ferr
}

func (m *Manager) count(td spiffeid.TrustDomain, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.stats[td]
	if c == nil {
		c = &counters{}
		m.stats[td] = c
	}
	switch {
	case err == nil:
		c.ok++
	case errors.Is(err, ErrRefused):
		c.refused++
	default:
		c.failed++
	}
}
