package server

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/netutil"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/dashboard"
	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/shared/atomicfile"
	"github.com/wardproject/ward/internal/shared/buildinfo"
	"github.com/wardproject/ward/internal/shared/posture"
)

// maxDashboardKeys bounds the keys one snapshot lists (the most urgent
// first); the counts cover all of them.
const maxDashboardKeys = 200

// maxDashboardConns bounds the dashboard listener's open connections.
const maxDashboardConns = 64

// SetDashboardExtras adds what parts wired beside the authority know to the
// dashboard (anomaly alerts, drift findings, decisions): each non-nil
// function of x replaces the one set before. Call it before Start.
func (s *Server) SetDashboardExtras(x dashboard.Extras) {
	if x.Anomalies != nil {
		s.dashExtras.Anomalies = x.Anomalies
	}
	if x.Drift != nil {
		s.dashExtras.Drift = x.Drift
	}
	if x.Decisions != nil {
		s.dashExtras.Decisions = x.Decisions
	}
}

// DashboardAddress is the bound dashboard address, or "".
func (s *Server) DashboardAddress() string {
	if s.dashLn == nil {
		return ""
	}
	return s.dashLn.Addr().String()
}

// DashboardTokenFile is the file holding the dashboard token ("" when the
// dashboard is off).
func (s *Server) DashboardTokenFile() string {
	if s.cfg.Dashboard.Address == "" {
		return ""
	}
	return s.cfg.Dashboard.TokenFile
}

// dashboardToken reads the token file, creating it (random, 0600) when it
// does not exist; a file others may read is refused.
func dashboardToken(path string) (string, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		tok, err := dashboard.NewToken(rand.Read)
		if err != nil {
			return "", err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return "", err
		}
		if err := atomicfile.Write(path, []byte(tok+"\n"), 0o600); err != nil {
			return "", fmt.Errorf("creating the dashboard token file %s: %w", path, err)
		}
		return tok, nil
	}
	if err != nil {
		return "", fmt.Errorf("dashboard.token_file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("dashboard.token_file %s has mode %v: other users could read the token; run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("dashboard.token_file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 32 {
		return "", fmt.Errorf("dashboard.token_file %s holds %d characters: use at least 32 random ones (or delete the file and the authority creates one)", path, len(tok))
	}
	return tok, nil
}

// startDashboard listens on dashboard.address (loopback, checked by the
// configuration) when it is set.
func (s *Server) startDashboard() error {
	dc := s.cfg.Dashboard
	if dc.Address == "" {
		return nil
	}
	tok, err := dashboardToken(dc.TokenFile)
	if err != nil {
		return err
	}
	h, err := dashboard.New(dashboard.Options{Token: tok, State: s.dashboardState, Interval: time.Duration(dc.RefreshInterval),
		MaxStreamsPerClient: dc.MaxStreamsPerClient, MaxStreams: dc.MaxStreams, Log: s.log})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", dc.Address)
	if err != nil {
		return fmt.Errorf("listening on dashboard.address %s: %w", dc.Address, err)
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); !ok || !tcp.IP.IsLoopback() {
		ln.Close()
		return fmt.Errorf("dashboard.address %s bound %s, which is not a loopback address: the dashboard listens on loopback only", dc.Address, ln.Addr())
	}
	s.dashLn = ln
	wctx, stop := context.WithCancel(context.Background())
	s.dashStop = stop
	go watchDashboardToken(wctx, dc.TokenFile, h, s.log, dashboardTokenCheck)
	s.dash = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: 32 << 10, IdleTimeout: time.Minute}
	go func() {
		if err := s.dash.Serve(netutil.LimitListener(ln, maxDashboardConns)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.serveErr <- err
		}
	}()
	return nil
}

// dashboardTokenCheck is how often the token file is read again: a
// changed token ends every dashboard session.
const dashboardTokenCheck = 2 * time.Second

// watchDashboardToken reads the token file every period (the server:
// dashboardTokenCheck) until ctx ends and gives h what it holds: a new
// token ends every session; a file that became unreadable (or readable by
// others) ends them too and refuses logins until it is fixed.
func watchDashboardToken(ctx context.Context, path string, h *dashboard.Handler, log *slog.Logger, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		tok, err := dashboardToken(path)
		if err != nil {
			log.Error("dashboard token file: refusing every dashboard login until it is fixed", "err", err)
			tok = ""
		}
		h.SetToken(tok)
	}
}

func (s *Server) stopDashboard() {
	if s.dashStop != nil {
		s.dashStop()
	}
	if s.dash == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.dash.Shutdown(ctx); err != nil {
		s.dash.Close() // live streams do not end by themselves
	}
}

// dashboardState is one snapshot for the dashboard: names, states, counts
// and times, never key material, context values or tokens.
func (s *Server) dashboardState(ctx context.Context) dashboard.State {
	now := time.Now()
	out := dashboard.State{Generated: now.UTC(), TrustDomain: s.cfg.TrustDomain, Version: buildinfo.Read().Version,
		Federation: []dashboard.Federation{}, Agents: []dashboard.Agent{}, Keys: []dashboard.Key{}, Anomalies: []dashboard.Alert{},
		Recent: []dashboard.Event{}, CA: dashboard.CA{Keys: []dashboard.CAKey{}},
		Policy: dashboard.Policy{Versions: []dashboard.PolicyVersion{}, DenyList: []string{}, Decisions: []dashboard.Decision{}},
		Drift:  dashboard.Drift{Findings: []dashboard.Finding{}}}
	fail := func(what string, err error) { out.Errors = append(out.Errors, what+": "+err.Error()) }
	out.Health.Storage = s.raw.Backend()
	out.Health.Warnings = []string{}
	if st, err := s.seals.Status(ctx); err == nil {
		out.Health.Initialized, out.Health.SealType = st.Initialized, st.Type
	} else {
		fail("seal", err)
	}
	out.Health.Sealed = s.Sealed()
	out.Health.AuditSize = s.auditSize()
	out.Policy.Decisions = s.decisionCounts()
	if x := s.dashExtras; x.Anomalies != nil {
		if a := x.Anomalies(); a != nil {
			out.Anomalies = a
		}
	}
	if x := s.dashExtras; x.Drift != nil {
		if d := x.Drift(); d != nil {
			out.Drift = *d
			out.Drift.Configured = true
			if out.Drift.Findings == nil {
				out.Drift.Findings = []dashboard.Finding{}
			}
			out.Drift.Total = max(out.Drift.Total, len(out.Drift.Findings))
		}
	} else if rep, ok := s.Drift(); ok && rep.PostureVersion > 0 {
		// the authority's own continuous evaluation (drift.go); without a
		// declared posture there is nothing to drift from
		out.Drift.Configured = true
		out.Drift.PostureVersion, out.Drift.Evaluated = rep.PostureVersion, rep.Evaluated
		fs := slices.Clone(rep.Findings)
		slices.SortStableFunc(fs, func(a, b posture.Finding) int { return cmp.Compare(b.Severity, a.Severity) })
		for _, f := range fs[:min(len(fs), 200)] {
			out.Drift.Findings = append(out.Drift.Findings, dashboard.Finding{Severity: f.Severity.String(), Object: f.Object, Rule: f.Rule,
				Evidence: f.Evidence, Fix: f.Fix})
		}
		out.Drift.Total = len(fs)
	}
	st, err := s.state()
	if err != nil {
		return out
	}
	if w := s.policyLintWarning(true); w != "" {
		out.Health.Warnings = append(out.Health.Warnings, w)
	}
	// keys
	if keys, err := st.kms.List(ctx, ""); err == nil {
		out.KeyCount = len(keys)
		grace := time.Duration(s.cfg.KMS.RotationCheckInterval)
		for _, k := range keys {
			dk := dashboard.Key{Name: k.Name, Classification: k.Classification, LastRotated: k.LastRotated.UTC()}
			if len(k.Versions) > 0 {
				dk.Version = k.Latest()
			}
			if k.RotationPeriod > 0 {
				dk.NextRotation = k.NextRotation.UTC()
				dk.Overdue = now.Sub(k.LastRotated) > k.RotationPeriod+grace
			}
			if dk.Overdue {
				out.Overdue++
			}
			out.Keys = append(out.Keys, dk)
		}
		slices.SortFunc(out.Keys, func(a, b dashboard.Key) int {
			if a.Overdue != b.Overdue {
				if a.Overdue {
					return -1
				}
				return 1
			}
			// most recently rotated first: a rotation shows at the top
			return cmp.Or(b.LastRotated.Compare(a.LastRotated), strings.Compare(a.Name, b.Name))
		})
		if len(out.Keys) > maxDashboardKeys {
			out.Keys = out.Keys[:maxDashboardKeys]
		}
	} else {
		fail("keys", err)
	}
	// policy
	if vs, cur, err := st.policy.List(ctx); err == nil {
		out.Policy.Current = cur
		for i := len(vs) - 1; i >= 0 && len(out.Policy.Versions) < 50; i-- {
			v := vs[i]
			d := v.Bundle.DenyList
			out.Policy.Versions = append(out.Policy.Versions, dashboard.PolicyVersion{Version: v.Number, Created: v.Created.UTC(), Actor: v.Actor,
				Comment: v.Comment, Policies: v.PolicyCount, DenyList: len(d.SPIFFEIDs) + len(d.Serials) + len(d.TaintedKeys)})
			if v.Number == cur {
				out.Policy.DenyList = append(out.Policy.DenyList, d.SPIFFEIDs...)
				for _, sr := range d.Serials {
					out.Policy.DenyList = append(out.Policy.DenyList, "serial "+sr)
				}
				for _, k := range d.TaintedKeys {
					out.Policy.DenyList = append(out.Policy.DenyList, "tainted CA key "+k)
				}
			}
		}
	} else {
		fail("policy", err)
	}
	// recent audit events
	if err := s.ReadRecentAudit(ctx, 15, func(ev audit.Event) {
		out.Recent = append(out.Recent, dashboard.Event{Seq: ev.Seq, Time: ev.Time.UTC(), Actor: ev.Actor, Operation: ev.Operation, Key: ev.Key, Result: ev.Result})
	}); err != nil {
		fail("audit", err)
	}
	slices.Reverse(out.Recent) // newest first
	// identity
	id := st.ident.Load()
	if id == nil {
		return out
	}
	out.Health.IdentityActive = true
	if id.fed != nil {
		out.Health.Warnings = append(out.Health.Warnings, id.fed.Warnings()...)
		for _, f := range id.fed.List() {
			df := dashboard.Federation{TrustDomain: f.TrustDomain.Name(), Profile: string(f.Profile), Sequence: f.Sequence,
				LastRefresh: f.LastRefresh.UTC(), NextRefresh: f.NextRefresh.UTC(), Stale: f.Stale, LastError: f.LastError, Revoked: f.Revocations.Entries}
			if f.Witness.Checkpoint != nil {
				df.WitnessSize = f.Witness.Checkpoint.Size
			}
			if f.Witness.Alert != nil || f.Witness.OwnLogAlert != nil {
				df.WitnessAlert = "audit log went backwards or forked (ward federation show " + df.TrustDomain + ")"
			}
			out.Federation = append(out.Federation, df)
		}
	}
	if id.ca != nil {
		cs := id.ca.State()
		out.CA.BundleSequence = cs.BundleSequence
		for _, k := range cs.Keys {
			out.CA.Keys = append(out.CA.Keys, dashboard.CAKey{ID: k.ID, Kind: string(k.Kind), State: string(k.State), NotAfter: k.NotAfter.UTC(), InBundle: k.InBundle})
		}
	}
	if id.reg != nil {
		if agents, err := id.reg.ListAgents(ctx); err == nil {
			out.AgentCount = len(agents)
			slices.SortFunc(agents, func(a, b registry.Agent) int { return b.LastSeen.Compare(a.LastSeen) })
			for _, a := range agents[:min(len(agents), 200)] {
				out.Agents = append(out.Agents, dashboard.Agent{SPIFFEID: a.SPIFFEID, Attestation: a.AttestationType, Expires: a.Expires.UTC(),
					LastSeen: a.LastSeen.UTC(), Evicted: a.Evicted})
			}
		} else {
			fail("agents", err)
		}
		if n, err := s.entryCount(ctx, id.reg); err == nil {
			out.Entries = n
		} else {
			fail("entries", err)
		}
	}
	return out
}

// decisionCounts reads the authority's policy decision counters.
func (s *Server) decisionCounts() []dashboard.Decision {
	out := []dashboard.Decision{}
	mfs, err := s.metrics.reg.Gather()
	if err != nil {
		return out
	}
	for _, mf := range mfs {
		if mf.GetName() != "ward_policy_decisions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			d := dashboard.Decision{Source: "authority: workload KMS", Count: uint64(m.GetCounter().GetValue())}
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "action":
					d.Action = l.GetValue()
				case "result":
					d.Result = l.GetValue()
				}
			}
			out = append(out, d)
		}
	}
	if x := s.dashExtras; x.Decisions != nil {
		out = append(out, x.Decisions()...)
	}
	// denials the proxies and gateways reported through their agents
	for _, n := range s.Telemetry() {
		for _, p := range n.Processes {
			if p.Denials > 0 || p.MTLS > 0 {
				out = append(out, dashboard.Decision{Source: p.Kind + " " + p.Name + " on " + n.Node + reportedBy(p.Source), Action: "connect", Result: "deny", Count: p.Denials})
			}
		}
	}
	return out
}

// entryCount counts registration entries, at most every 30 s (listing
// decodes every entry).
func (s *Server) entryCount(ctx context.Context, reg *registry.Registry) (int, error) {
	s.dashMu.Lock()
	defer s.dashMu.Unlock()
	if !s.entriesAt.IsZero() && time.Since(s.entriesAt) < 30*time.Second {
		return s.entries, nil
	}
	es, err := reg.ListEntries(ctx, registry.ListFilter{})
	if err != nil {
		return 0, err
	}
	s.entries, s.entriesAt = len(es), time.Now()
	return s.entries, nil
}

// reportedBy names the attested sender of a process's telemetry (the
// agent's record of the caller), when known.
func reportedBy(src string) string {
	if src == "" {
		return ""
	}
	return " (reported by " + src + ")"
}
