package federation

// The channels a ward authority follows on each federated peer's
// https_spiffe bundle endpoint (revocations, services catalog, network
// tunnels) are one long-poll: mTLS between the server IDs (the peer's
// endpoint verified with its own federated bundle only), ?after= the last
// accepted sequence, a bounded body, a header saying the answer is ward's,
// a poll budget against a peer answering at once, and a backoff on
// errors. Each channel says only where it polls and what it accepts.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// channel is one long-polled federation channel.
type channel struct {
	// name is what the logs and errors call it ("revocation channel").
	name string
	// what names its payload in errors ("revocations").
	what         string
	path, header string
	// max bounds an answer's body (bytes).
	max int
	// after returns the sequence last accepted from td (has false: none).
	after func(td spiffeid.TrustDomain) (seq uint64, has bool)
	// accept checks, audits and installs an answer.
	accept func(ctx context.Context, td spiffeid.TrustDomain, body []byte) error
	// setErr records the channel's last error with td ("" clears it).
	setErr func(td spiffeid.TrustDomain, e string)
	// notWard is the error when the endpoint's answer lacks header.
	notWard string
}

// follow long-polls ch on rel's endpoint until ctx ends.
func (m *Manager) follow(ctx context.Context, rel Relationship, c RevocationClient, ch channel) {
	const minBackoff, maxBackoff = 500 * time.Millisecond, 30 * time.Second
	backoff := minBackoff
	// A peer answering every long-poll at once is paced (pollbudget.go).
	var budget pollBudget
	throttled := false
	for ctx.Err() == nil {
		if d := budget.take(m.opts.Clock()); d > 0 {
			if !throttled {
				throttled = true
				m.opts.Log.Warn("federation: the "+ch.name+" answers faster than it is polled; polling it at most once per "+revocationRefill.String()+" (a peer that answers every long-poll at once is broken or hostile)",
					"trust_domain", rel.TrustDomain.Name(), "burst", revocationBurst)
			}
			c.pause(ctx, d)
			continue
		}
		body, err := m.poll(ctx, rel, c, ch)
		if err == nil {
			err = ch.accept(ctx, rel.TrustDomain, body)
		} else if ctx.Err() == nil {
			ch.setErr(rel.TrustDomain, err.Error())
			m.opts.Log.Debug(ch.name, "trust_domain", rel.TrustDomain.Name(), "err", err)
		}
		if err == nil {
			backoff = minBackoff
			continue
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// poll asks rel's endpoint for ch's payload newer than the last accepted,
// presenting this authority's server SVID and requiring the endpoint's
// SPIFFE ID, verified with the peer's own bundle only.
func (m *Manager) poll(ctx context.Context, rel Relationship, c RevocationClient, ch channel) ([]byte, error) {
	e, ok := m.get(rel.TrustDomain)
	if !ok || e.bundle == nil {
		return nil, fmt.Errorf("no bundle of %s yet", rel.TrustDomain)
	}
	u, err := url.Parse(rel.EndpointURL)
	if err != nil {
		return nil, err
	}
	u.Path, u.RawQuery = ch.path, url.Values{"wait": {c.Wait.String()}}.Encode()
	if seq, has := ch.after(rel.TrustDomain); has {
		u.RawQuery += "&after=" + strconv.FormatUint(seq, 10)
	}
	tc := tlsconfig.MTLSClientConfig(svidFunc(c.SVID), e.bundle, tlsconfig.AuthorizeID(rel.EndpointID))
	client := &http.Client{
		Transport: &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true, TLSHandshakeTimeout: m.opts.FetchTimeout},
		Timeout:   c.Wait + m.opts.FetchTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("the " + ch.name + " does not follow redirects")
		},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), http.NoBody)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s of %s: %w", ch.what, rel.TrustDomain, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, int64(ch.max)+1))
	if err != nil {
		return nil, fmt.Errorf("reading the %s of %s: %w", ch.what, rel.TrustDomain, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s of %s answered %s: %.200q", ch.name, rel.TrustDomain, resp.Status, bytes.TrimSpace(body))
	}
	if resp.Header.Get(ch.header) != "1" {
		return nil, fmt.Errorf("the bundle endpoint of %s %s", rel.TrustDomain, ch.notWard)
	}
	return body, nil
}
