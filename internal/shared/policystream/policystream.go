// Package policystream carries policy versions down the chain
// authority → agent → proxy over the PolicyDistribution.WatchPolicy stream:
// Source follows a stream (reconnecting with bounded backoff) and hands on
// each new version, and Relay serves the latest version it holds to
// downstream watchers. Versions only move forward; a version that does not
// compile is never handed on, so an enforcement point keeps its last good
// set (or, never having had one, denies everything).
package policystream

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/shared/policy"
)

// Source follows a WatchPolicy stream on conn.
type Source struct {
	client wardv1.PolicyDistributionClient
	log    *slog.Logger
	// MaxBackoff bounds the wait between reconnects (default 1s: a
	// revocation must reach the proxies within 2 s of the stream's other
	// end coming back; 5 s let it arrive late after an outage).
	MaxBackoff time.Duration

	mu     sync.Mutex
	known  uint64
	status Status
}

// Status describes the stream for health endpoints and logs.
type Status struct {
	Connected   bool
	Version     uint64
	LastUpdate  time.Time
	LastError   string
	Reconnects  int
	LastVersion *wardv1.PolicyVersion
}

// MaxMessage is the largest policy version a Source receives: a bundle
// ParseBundle accepts plus room for the rest of the message. gRPC's
// default (4 MiB) would leave a proxy or gateway on its old version, and
// so without new revocations, once policies and federated catalogs grow
// past it.
const MaxMessage = policy.MaxBundleJSON + 1<<20

// NewSource returns a Source reading from conn.
func NewSource(conn grpc.ClientConnInterface, log *slog.Logger) *Source {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Source{client: wardv1.NewPolicyDistributionClient(conn), log: log, MaxBackoff: time.Second}
}

// SetKnown makes the source skip versions up to n (the caller already
// holds n, e.g. from a cache).
func (s *Source) SetKnown(n uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n > s.known {
		s.known = n
	}
}

// Status returns a snapshot of the stream's state.
func (s *Source) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// Verify checks a received version: the digest matches the bundle, the
// bundle's version matches, and it compiles. It returns the compiled set.
func Verify(v *wardv1.PolicyVersion) (*policy.Set, error) {
	sum := sha256.Sum256(v.BundleJson)
	if v.Digest != "" && hex.EncodeToString(sum[:]) != v.Digest {
		return nil, fmt.Errorf("policy version %d: bundle digest mismatch (corrupted in transit)", v.Version)
	}
	b, err := policy.ParseBundle(v.BundleJson)
	if err != nil {
		return nil, fmt.Errorf("policy version %d: %w", v.Version, err)
	}
	if b.Version != v.Version {
		return nil, fmt.Errorf("policy version %d carries a bundle of version %d", v.Version, b.Version)
	}
	set, err := policy.CompileBundle(b)
	if err != nil {
		return nil, fmt.Errorf("policy version %d does not compile here: %w", v.Version, err)
	}
	return set, nil
}

// RunVersions follows the stream until ctx ends, calling update with every
// verified version newer than the last one (never concurrently). It
// reconnects after any error with exponential backoff up to MaxBackoff.
func (s *Source) RunVersions(ctx context.Context, update func(*wardv1.PolicyVersion, *policy.Set)) error {
	const minBackoff = 100 * time.Millisecond
	backoff := minBackoff
	lastLogged := ""
	for ctx.Err() == nil {
		started := time.Now()
		got, err := s.follow(ctx, update)
		if ctx.Err() != nil {
			return nil
		}
		// A stream that delivered a version or ran a while was healthy:
		// reconnect quickly (a renewed agent SVID ends streams on purpose).
		if got || time.Since(started) > time.Second {
			backoff = minBackoff
		}
		s.mu.Lock()
		s.status.Connected = false
		s.status.Reconnects++
		if err != nil {
			s.status.LastError = err.Error()
		}
		s.mu.Unlock()
		// Said once per distinct error (a missing socket or a refusal
		// repeats at every retry); the retries themselves are debug.
		if msg := fmt.Sprint(err); got || msg != lastLogged {
			s.log.Warn("policy stream interrupted; reconnecting (the same error again is logged at debug level)", "err", err, "in", backoff)
			lastLogged = msg
		} else {
			s.log.Debug("policy stream still interrupted; reconnecting", "err", err, "in", backoff)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, s.MaxBackoff)
	}
	return nil
}

// Run implements the proxy's PolicySource: compiled sets only.
func (s *Source) Run(ctx context.Context, update func(*policy.Set)) error {
	return s.RunVersions(ctx, func(_ *wardv1.PolicyVersion, set *policy.Set) { update(set) })
}

// follow reads one stream until it fails; got says whether it delivered
// any message.
func (s *Source) follow(ctx context.Context, update func(*wardv1.PolicyVersion, *policy.Set)) (got bool, err error) {
	s.mu.Lock()
	known := s.known
	s.mu.Unlock()
	stream, err := s.client.WatchPolicy(ctx, &wardv1.WatchPolicyRequest{KnownVersion: known}, grpc.MaxCallRecvMsgSize(MaxMessage))
	if err != nil {
		return false, err
	}
	s.mu.Lock()
	s.status.Connected = true
	s.mu.Unlock()
	for {
		v, err := stream.Recv()
		if err != nil {
			return got, err
		}
		got = true
		if v.Version <= known {
			continue
		}
		set, err := Verify(v)
		if err != nil {
			s.log.Error("rejected policy version; keeping the previous one", "err", err)
			s.mu.Lock()
			s.status.LastError = err.Error()
			s.mu.Unlock()
			continue
		}
		known = v.Version
		s.mu.Lock()
		s.known = known
		s.status.Version, s.status.LastUpdate, s.status.LastVersion = known, time.Now(), v
		s.mu.Unlock()
		update(v, set)
	}
}

// Relay serves the newest version it was given to WatchPolicy callers.
type Relay struct {
	wardv1.UnimplementedPolicyDistributionServer
	mu      sync.Mutex
	latest  *wardv1.PolicyVersion
	changed chan struct{}
}

// NewRelay returns an empty Relay (watchers wait for the first version).
func NewRelay() *Relay { return &Relay{changed: make(chan struct{})} }

// Publish makes v the version served, if it is newer than the current one.
func (r *Relay) Publish(v *wardv1.PolicyVersion) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.latest != nil && v.Version <= r.latest.Version {
		return false
	}
	r.latest = v
	close(r.changed)
	r.changed = make(chan struct{})
	return true
}

// Latest returns the version served, or nil.
func (r *Relay) Latest() *wardv1.PolicyVersion {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.latest
}

// WatchPolicy implements PolicyDistributionServer.
func (r *Relay) WatchPolicy(req *wardv1.WatchPolicyRequest, ss wardv1.PolicyDistribution_WatchPolicyServer) error {
	known := req.KnownVersion
	for {
		r.mu.Lock()
		v, ch := r.latest, r.changed
		r.mu.Unlock()
		if v != nil && v.Version > known {
			if err := ss.Send(v); err != nil {
				return err
			}
			known = v.Version
		}
		select {
		case <-ss.Context().Done():
			return nil
		case <-ch:
		}
	}
}
