package agent

import (
	"context"
	"crypto/fips140"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/shared/peercred"
	"github.com/wardproject/ward/internal/shared/telemetry"
)

// DefaultTelemetryInterval is how often the agent reports telemetry.
const DefaultTelemetryInterval = 15 * time.Second

// Bounds of the local telemetry API (the policy socket).
const (
	// maxProcsPerUID: reports kept per local uid, so one local user cannot
	// crowd out the others' proxies.
	maxProcsPerUID = 16
	// minLocalReport: a process reports at most this often.
	minLocalReport = time.Second
)

// localTelemetry keeps the latest report of each local proxy and gateway.
type localTelemetry struct {
	mu    sync.Mutex
	procs map[string]localReport // by uid/pid/kind/name
}

type localReport struct {
	uid uint32
	pid int32
	at  time.Time
	r   telemetry.Report
}

// telemetryServer is the Telemetry service on the policy socket: local
// proxies and gateways send their telemetry.Report (the socket's
// interceptor has already checked the caller, authorizePolicyCaller).
type telemetryServer struct {
	wardv1.UnimplementedTelemetryServer
	a *Agent
}

func (t telemetryServer) Report(ctx context.Context, req *wardv1.TelemetryReport) (*wardv1.TelemetryAck, error) {
	p, _ := peer.FromContext(ctx)
	ai, ok := p.AuthInfo.(peercred.AuthInfo)
	if p == nil || !ok {
		return nil, status.Error(codes.Internal, "telemetry: caller has no peer credentials")
	}
	r, err := telemetry.DecodeReport(req.Report)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	if r.Kind == telemetry.KindAgent {
		return nil, status.Error(codes.InvalidArgument, "telemetry: only proxies and gateways report on the policy socket (kind agent is the agent's own)")
	}
	c := ai.Caller
	// Bind the report to the caller: its source is what the agent
	// attested, and a listener identity must be one of the caller's own
	// (when it has entries; a caller let in by uid has none to check).
	var ids []string
	if sel, err := t.a.att.Attest(ctx, c); err == nil {
		for _, id := range t.a.Identities(attest.Normalize(sel)) {
			ids = append(ids, id.ID.String())
		}
	}
	r.Source = reportSource(c, ids)
	if len(ids) > 0 {
		for _, l := range r.Listeners {
			if l.SPIFFEID != "" && !slices.Contains(ids, l.SPIFFEID) {
				return nil, status.Errorf(codes.PermissionDenied, "telemetry: listener %q presents %s, which is not an identity of this caller (%s)", l.Name, l.SPIFFEID, r.Source)
			}
		}
		if strings.HasPrefix(r.Name, "spiffe://") && !slices.Contains(ids, r.Name) {
			return nil, status.Errorf(codes.PermissionDenied, "telemetry: name %s is not an identity of this caller (%s)", r.Name, r.Source)
		}
	}
	key := fmt.Sprintf("%d/%d/%s/%s", c.UID, c.PID, r.Kind, r.Name)
	now := t.a.now()
	lt := t.a.tel
	lt.mu.Lock()
	defer lt.mu.Unlock()
	lt.expire(now, t.a.telemetryInterval())
	if err := lt.claimedByOther(c.PID, r, slices.Contains(ids, r.Name)); err != nil {
		return nil, err
	}
	prev, known := lt.procs[key]
	if known && now.Sub(prev.at) < minLocalReport {
		return nil, status.Errorf(codes.ResourceExhausted, "telemetry: one report per %s per process", minLocalReport)
	}
	if !known {
		n := 0
		for _, p := range lt.procs {
			if p.uid == c.UID {
				n++
			}
		}
		if n >= maxProcsPerUID || len(lt.procs) >= telemetry.MaxProcesses {
			return nil, status.Errorf(codes.ResourceExhausted, "telemetry: this agent keeps the reports of at most %d processes (%d per uid)", telemetry.MaxProcesses, maxProcsPerUID)
		}
	}
	lt.procs[key] = localReport{uid: c.UID, pid: c.PID, at: now, r: r}
	return &wardv1.TelemetryAck{NextReportAfter: uint32(t.a.telemetryInterval() / time.Second)}, nil
}

// reportSource names a report's sender as attested: pid, uid and the
// SPIFFE IDs of its entries (at most 4).
func reportSource(c attest.Caller, ids []string) string {
	s := fmt.Sprintf("pid %d uid %d", c.PID, c.UID)
	if len(ids) > 4 {
		ids = append(ids[:4:4], "...")
	}
	if len(ids) > 0 {
		s += " " + strings.Join(ids, ",")
	}
	return s
}

// claimedByOther refuses r when another live process reports the same
// kind and name (unless the name is one of the caller's own SPIFFE IDs,
// proven: replicas of one workload share it), or a listener at one of
// r's addresses in the same network namespace: one workload cannot
// report under another proxy's name or listeners (false drift findings).
// The report of a process that is gone no longer holds them: it is
// dropped (a restarted proxy takes its name over at once).
func (lt *localTelemetry) claimedByOther(pid int32, r telemetry.Report, nameProven bool) error {
	var ns string
	for k, o := range lt.procs {
		if o.pid == pid {
			continue
		}
		why := ""
		if !nameProven && o.r.Kind == r.Kind && o.r.Name == r.Name {
			why = r.Kind + " " + r.Name
		}
		for _, l := range r.Listeners {
			for _, ol := range o.r.Listeners {
				if why == "" && l.Address != "" && l.Address == ol.Address {
					if ns == "" {
						ns = netnsOf(pid)
					}
					if ons := netnsOf(o.pid); ns == "?" || ons == "?" || ns == ons {
						why = "a listener at " + l.Address
					}
				}
			}
		}
		if why == "" {
			continue
		}
		if !processAlive(o.pid) {
			delete(lt.procs, k)
			continue
		}
		return status.Errorf(codes.PermissionDenied, "telemetry: %s is reported by another process (%s)", why, o.r.Source)
	}
	return nil
}

// netnsOf names pid's network namespace, or "?" when it cannot be read
// (then it counts as the same as any).
func netnsOf(pid int32) string {
	l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return "?"
	}
	return l
}

// processAlive says whether pid runs (or exists under another uid).
func processAlive(pid int32) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(int(pid), 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// expire drops the reports of processes silent for three intervals.
func (lt *localTelemetry) expire(now time.Time, interval time.Duration) {
	for k, p := range lt.procs {
		if now.Sub(p.at) > 3*interval {
			delete(lt.procs, k)
		}
	}
}

func (a *Agent) telemetryInterval() time.Duration {
	if d := time.Duration(a.cfg.TelemetryInterval); d > 0 {
		return d
	}
	return DefaultTelemetryInterval
}

// nodeReport is what the agent sends: its own summary (FIPS mode, the
// SVIDs it holds) and the live local reports.
func (a *Agent) nodeReport() telemetry.NodeReport {
	own := telemetry.Report{Kind: telemetry.KindAgent, Name: a.cfg.SocketPath, FIPS: fips140.Enabled()}
	if s := a.agentSVID.Load(); s != nil && len(s.Certificates) > 0 {
		own.SVIDs = append(own.SVIDs, telemetry.SVID{SPIFFEID: s.ID.String(), ExpiresAt: s.Certificates[0].NotAfter.UTC()})
	}
	a.mu.RLock()
	for _, sv := range a.svids {
		if len(own.SVIDs) >= telemetry.MaxSVIDs {
			break
		}
		id := ""
		if len(sv.chain[0].URIs) > 0 {
			id = sv.chain[0].URIs[0].String()
		}
		own.SVIDs = append(own.SVIDs, telemetry.SVID{SPIFFEID: id, ExpiresAt: sv.notAfter().UTC()})
	}
	a.mu.RUnlock()
	sort.Slice(own.SVIDs, func(i, j int) bool { return own.SVIDs[i].SPIFFEID < own.SVIDs[j].SPIFFEID })
	out := telemetry.NodeReport{Agent: own}
	lt := a.tel
	lt.mu.Lock()
	lt.expire(a.now(), a.telemetryInterval())
	keys := make([]string, 0, len(lt.procs))
	for k := range lt.procs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		out.Processes = append(out.Processes, lt.procs[k].r)
	}
	lt.mu.Unlock()
	return out
}

// runTelemetry reports to the authority every telemetry interval (or the
// longer interval the authority asks for) until ctx ends.
func (a *Agent) runTelemetry(ctx context.Context) {
	client := wardv1.NewTelemetryClient(agentConn{a})
	wait := time.Second // the first report soon after the agent has an SVID
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = a.telemetryInterval()
		if a.agentSVID.Load() == nil {
			wait = time.Second
			continue
		}
		b, err := json.Marshal(a.nodeReport())
		if err != nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ack, err := client.Report(cctx, &wardv1.TelemetryReport{Report: b})
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				a.log.Debug("telemetry report failed", "err", err)
			}
			continue
		}
		if d := time.Duration(ack.NextReportAfter) * time.Second; d > wait && d <= time.Hour {
			wait = d
		}
	}
}
