package federation

// The one accept step of the channels' documents (revocations, services
// catalog, network tunnels): a federated authority's answer is bounded,
// parsed strictly, must be for its own trust domain, may never go back in
// sequence nor change content at the same sequence, and is audited
// (accepted or refused: one whose audit event cannot be written is not
// installed) before it is stored behind the barrier. Each channel says
// only what its relationship must allow and how its content is checked.

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/shared/errs"
)

// channelDoc is a channel's document: its trust domain and sequence.
type channelDoc interface {
	head() (td string, seq uint64)
}

func (c Catalog) head() (string, uint64)     { return c.TrustDomain, c.Sequence }
func (l NetworkList) head() (string, uint64) { return l.TrustDomain, l.Sequence }
func (r Revocations) head() (string, uint64) { return r.TrustDomain, r.Sequence }

// acceptSpec is what differs between the channels' accept steps.
type acceptSpec[D channelDoc] struct {
	// event is the audit event ("federation.catalog"); noun names the
	// document in errors ("catalog"); own what a peer may only publish
	// of itself ("services").
	event, noun, own string
	// max bounds the body (bytes).
	max int
	// key is the store key of what is received from the trust domain.
	key string
	// refusedLog and acceptedLog are the log lines of a refusal and of an
	// installed document.
	refusedLog, acceptedLog string
	// allowed returns "" when the relationship takes this channel, else
	// why not.
	allowed func() string
	// prev returns the last accepted document.
	prev func() (D, bool)
	// check validates and normalizes the parsed document and adds its
	// audit fields.
	check func(d *D, fields map[string]string) error
	// same compares two checked documents' content.
	same func(a, b D) bool
	// stored is what is written under key for d received at; keep
	// remembers it once written.
	stored func(d D, at time.Time) (value any, keep func())
	// setErr records the channel's last error ("" clears it).
	setErr func(e string)
	// done runs after an install (logArgs are the accepted log line's).
	done func(ctx context.Context, d D, changed bool, fields map[string]string) (logArgs []any)
}

// acceptDoc is the accept step of a document received from td's authority.
func acceptDoc[D channelDoc](ctx context.Context, m *Manager, td spiffeid.TrustDomain, body []byte, s acceptSpec[D]) error {
	fields := map[string]string{"trust_domain": td.Name(), "bytes": strconv.Itoa(len(body))}
	prev, hasPrev := s.prev()
	_, prevSeq := prev.head()
	if hasPrev {
		fields["previous_sequence"] = strconv.FormatUint(prevSeq, 10)
	}
	refuse := func(format string, args ...any) error {
		err := errs.Errorf(errs.Denied, "federation: %s from %s refused: "+format, append([]any{s.noun, td.Name()}, args...)...)
		ev := m.event(ctx, s.event, audit.ResultDenied, fields)
		ev.Error = err.Error()
		if aerr := m.opts.Audit.Record(ctx, ev); aerr != nil {
			m.opts.Log.Error("could not audit a refused "+s.noun, "trust_domain", td.Name(), "err", aerr)
		}
		m.opts.Log.Warn(s.refusedLog, "trust_domain", td.Name(), "err", err)
		s.setErr(err.Error())
		return err
	}
	if why := s.allowed(); why != "" {
		return refuse("%s", why)
	}
	if len(body) > s.max {
		return refuse("%s of %d bytes or more, the limit is %d", s.noun, len(body), s.max)
	}
	var u D
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&u); err != nil {
		return refuse("the %s does not parse: %v", s.noun, err)
	}
	utd, seq := u.head()
	fields["sequence"] = strconv.FormatUint(seq, 10)
	if utd != td.Name() {
		return refuse("the %s is for trust domain %q; this channel is with %s, which can only publish its own %s", s.noun, utd, td.Name(), s.own)
	}
	if err := s.check(&u, fields); err != nil {
		return refuse("%v", err)
	}
	switch {
	case hasPrev && seq < prevSeq:
		return refuse("sequence %d is older than %d, already received (a replay, or %s's authority was rolled back)", seq, prevSeq, td.Name())
	case hasPrev && seq == prevSeq:
		if s.same(u, prev) {
			s.setErr("")
			return nil // nothing new
		}
		return refuse("sequence %d was already received with other content", seq)
	}
	changed := !hasPrev || !s.same(u, prev)
	fields["changed"] = strconv.FormatBool(changed)
	if err := m.opts.Audit.Record(ctx, m.event(ctx, s.event, audit.ResultOK, fields)); err != nil {
		return errs.Errorf(errs.Unavailable, "%w: %s from %s not installed, its audit event could not be written: %v", ErrUnavailable, s.noun, td.Name(), err)
	}
	value, keep := s.stored(u, m.opts.Clock().UTC())
	v, err := json.Marshal(value)
	if err != nil {
		return err
	}
	if _, err := m.opts.Store.Put(ctx, s.key, v); err != nil {
		return errs.Errorf(errs.Unavailable, "%w: storing the %s from %s: %v", ErrUnavailable, s.noun, td.Name(), err)
	}
	keep()
	s.setErr("")
	args := s.done(ctx, u, changed, fields)
	m.opts.Log.Info(s.acceptedLog, append([]any{"trust_domain", td.Name(), "sequence", seq, "changed", changed}, args...)...)
	return nil
}

// keepIn returns what remembers r as received from td in remote (under
// mu), for acceptSpec.stored.
func keepIn[R any](mu *sync.Mutex, remote map[spiffeid.TrustDomain]R, td spiffeid.TrustDomain, r R) func() {
	return func() {
		mu.Lock()
		remote[td] = r
		mu.Unlock()
	}
}

// setChannelErr records a channel's last error with td in errs (under
// mu); "" clears it.
func setChannelErr(mu *sync.Mutex, errs map[spiffeid.TrustDomain]string, td spiffeid.TrustDomain, e string) {
	mu.Lock()
	defer mu.Unlock()
	if e == "" {
		delete(errs, td)
	} else {
		errs[td] = e
	}
}
