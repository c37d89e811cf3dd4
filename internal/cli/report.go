package cli

import (
	"bytes"
	"cmp"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/governance/anomaly"
	"github.com/wardproject/ward/internal/governance/report"
	"github.com/wardproject/ward/internal/shared/atomicfile"
	"github.com/wardproject/ward/internal/shared/checkpoint"
	"github.com/wardproject/ward/internal/shared/posture"
	"github.com/wardproject/ward/internal/shared/telemetry"
)

func init() {
	register(func(root *cobra.Command) { root.AddCommand(reportCommand()) }, "report")
}

func reportCommand() *cobra.Command {
	var format, output, stateDir string
	var proxyMetrics []string
	var noVerify bool
	var grace, defaultTTL time.Duration
	cmd := &cobra.Command{
		Use:   "report",
		Short: "Compliance report (HTML or JSON): coverage, key rotation, certificates, revocations, audit, drift, anomalies (docs/report.md)",
		Long: `report reads the authority through its admin API (keys, classifications, entries,
agents, the CA, the whole audit log) and writes a compliance report: encryption coverage of
connections (from the proxies' metrics given with --proxy-metrics), key rotation compliance and
time to rotate per classification, certificate lifetimes and the nearest expiries, revocations
and the time they took to publish, the audit log's verification with its newest checkpoint,
drift findings and anomaly alerts. Each number names the evidence it comes from (an API call,
audit sequence numbers, key and entry names).

--format html writes one self-contained page (inline CSS and SVG charts, no script, nothing
fetched); --format json the same data as JSON (durations in seconds). The audit log is verified
like 'ward audit verify' does (against the signed checkpoint and the checkpoint remembered in
--state-dir, which the report only reads); --no-verify skips it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if format != "html" && format != "json" {
				return fmt.Errorf("--format %q: use html or json", format)
			}
			var in report.Input
			err := withClient(cmd, func(ctx context.Context, c *client.Client) error {
				var err error
				in, err = reportInput(ctx, c, !noVerify, stateDir)
				return err
			})
			if err != nil {
				return err
			}
			in.RotationGrace, in.DefaultSVIDTTL = grace, defaultTTL
			for _, u := range proxyMetrics {
				cv, err := scrapeProxyMetrics(cmd.Context(), u)
				if err != nil {
					return err
				}
				in.Coverage = append(in.Coverage, cv)
			}
			r := report.Build(in)
			var buf bytes.Buffer
			if format == "json" {
				err = report.WriteJSON(&buf, r)
			} else {
				err = report.WriteHTML(&buf, r)
			}
			if err != nil {
				return err
			}
			if output == "" || output == "-" {
				_, err = cmd.OutOrStdout().Write(buf.Bytes())
				return err
			}
			if err := atomicfile.Write(output, buf.Bytes(), 0o600); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s (%d bytes)\n", output, buf.Len())
			return nil
		},
	}
	cmd.Flags().StringVar(&format, "format", "html", "html or json")
	cmd.Flags().StringVarP(&output, "output", "o", "", "write the report to `FILE` (mode 0600, replaced atomically; default stdout)")
	cmd.Flags().StringArrayVar(&proxyMetrics, "proxy-metrics", nil, "a ward proxy's or gateway's metrics `URL` (http://127.0.0.1:9102/metrics) to measure encryption coverage from (repeatable)")
	cmd.Flags().BoolVar(&noVerify, "no-verify", false, "do not verify the audit log (the report says so)")
	cmd.Flags().StringVar(&stateDir, "state-dir", "", "where 'ward audit verify' remembers checkpoints (read only; default as for ward audit verify)")
	cmd.Flags().DurationVar(&grace, "rotation-grace", time.Hour, "a key counts as overdue once its active version is older than its rotation period plus this")
	cmd.Flags().DurationVar(&defaultTTL, "default-svid-ttl", time.Hour, "the authority's identity.svid_ttl (entries with TTL 0 get it)")
	return cmd
}

// bigList lets one listing be as large as the admin API sends (64 MiB):
// 100,000 entries are about 18 MiB, over gRPC's default of 4.
var bigList = grpc.MaxCallRecvMsgSize(64 << 20)

// reportInput reads what the report needs from the admin API.
func reportInput(ctx context.Context, c *client.Client, verify bool, stateDir string) (report.Input, error) {
	in := report.Input{Generated: time.Now()}
	st, err := c.Operator.Status(ctx, &wardv1.StatusRequest{})
	if err != nil {
		return in, err
	}
	in.TrustDomain, in.Version = st.TrustDomain, st.Version
	cls, err := c.Keys.ListClassifications(ctx, &wardv1.ListClassificationsRequest{})
	if err != nil {
		return in, err
	}
	for _, x := range cls.Classifications {
		in.Classifications = append(in.Classifications, report.Classification{Name: x.Name, RotationPeriod: x.RotationPeriod.AsDuration(), KeepVersions: x.KeepVersions})
	}
	keys, err := c.Keys.ListKeys(ctx, &wardv1.ListKeysRequest{}, bigList)
	if err != nil {
		return in, err
	}
	for _, k := range keys.Keys {
		rk := report.Key{Name: k.Name, Classification: k.Classification, Created: k.Created.AsTime(), RotationPeriod: k.RotationPeriod.AsDuration(),
			NextRotation: k.NextRotation.AsTime(), LatestVersion: k.LatestVersion}
		for _, v := range k.Versions {
			rk.Versions = append(rk.Versions, report.KeyVersion{Version: v.Version, State: v.State, Created: v.Created.AsTime()})
		}
		in.Keys = append(in.Keys, rk)
	}
	// Workload identity may not run on this authority: then there are no
	// entries, agents or CA keys to report.
	if es, err := c.Entries.ListEntries(ctx, &wardv1.ListEntriesRequest{}, bigList); err == nil {
		for _, e := range es.Entries {
			in.Entries = append(in.Entries, report.Entry{ID: e.Id, SPIFFEID: e.SpiffeId, TTL: time.Duration(e.TtlSeconds) * time.Second})
		}
	} else if !isFailedPrecondition(err) {
		return in, err
	}
	if as, err := c.Agents.ListAgents(ctx, &wardv1.ListAgentsRequest{}, bigList); err == nil {
		for _, a := range as.Agents {
			in.Agents = append(in.Agents, report.Agent{SPIFFEID: a.SpiffeId, Serial: a.Serial, Expires: a.Expires.AsTime(), Evicted: a.Evicted})
		}
	} else if !isFailedPrecondition(err) {
		return in, err
	}
	if ca, err := c.CA.ShowCA(ctx, &wardv1.ShowCARequest{}); err == nil {
		for _, k := range ca.Keys {
			in.CAKeys = append(in.CAKeys, report.CAKey{ID: k.Id, Kind: k.Kind, State: k.State, NotBefore: k.NotBefore.AsTime(), NotAfter: k.NotAfter.AsTime()})
		}
	} else if !isFailedPrecondition(err) {
		return in, err
	}
	if err := reportAudit(ctx, c, &in, verify, stateDir); err != nil {
		return in, err
	}
	if err := reportDrift(ctx, c, &in); err != nil {
		return in, err
	}
	return in, nil
}

// reportDrift reads the authority's latest drift evaluation: its findings
// (when a posture is declared) and the nodes' telemetry it evaluated
// (connections with and without mTLS, for coverage). An authority without
// drift evaluation wired in leaves both out: the report says so.
func reportDrift(ctx context.Context, c *client.Client, in *report.Input) error {
	d, err := c.Posture.GetDrift(ctx, &wardv1.GetDriftRequest{Latest: true})
	if code := status.Code(err); code == codes.FailedPrecondition || code == codes.Unimplemented {
		return nil
	} else if err != nil {
		return err
	}
	var rep posture.Report
	if err := json.Unmarshal(d.Report, &rep); err != nil {
		return fmt.Errorf("the authority's drift report: %w", err)
	}
	var st posture.State
	if err := json.Unmarshal(d.State, &st); err != nil {
		return fmt.Errorf("the state of the authority's drift report: %w", err)
	}
	if rep.PostureVersion > 0 {
		in.Drift = &report.Drift{Source: fmt.Sprintf("Posture.GetDrift: posture version %d (%s), evaluated %s", rep.PostureVersion, cmp.Or(rep.Scope, "defaults"), rep.Evaluated),
			Findings: []report.Finding{}}
		fs := slices.Clone(rep.Findings)
		slices.SortStableFunc(fs, func(a, b posture.Finding) int { return cmp.Compare(b.Severity, a.Severity) })
		for _, f := range fs {
			in.Drift.Findings = append(in.Drift.Findings, report.Finding{Severity: f.Severity.String(), Object: f.Object, Rule: f.Rule,
				Evidence: f.Evidence + " (" + f.Source + ")", Fix: f.Fix})
		}
	}
	in.Coverage = append(in.Coverage, telemetryCoverage(st.Nodes)...)
	return nil
}

// telemetryCoverage is what each node's processes reported.
func telemetryCoverage(nodes []telemetry.NodeReport) []report.Coverage {
	var out []report.Coverage
	for _, n := range nodes {
		for _, p := range n.Processes {
			if p.Kind == telemetry.KindGateway {
				continue // it splices TLS it does not terminate: the inbound proxy behind it counts those connections
			}
			cv := report.Coverage{Source: fmt.Sprintf("%s %s on %s", p.Kind, p.Name, n.Node), MTLS: p.MTLS, Plaintext: p.Plain,
				TLS13: p.TLSVersions["1.3"], Evidence: fmt.Sprintf("telemetry received %s", n.Received.UTC().Format(time.RFC3339))}
			for g, k := range p.Groups {
				if strings.Contains(strings.ToUpper(g), "MLKEM") {
					cv.PQ += k
				}
			}
			cv.TLS13, cv.PQ = min(cv.TLS13, cv.MTLS+cv.Plaintext), min(cv.PQ, cv.MTLS+cv.Plaintext)
			out = append(out, cv)
		}
	}
	return out
}

func isFailedPrecondition(err error) bool {
	return status.Code(err) == codes.FailedPrecondition
}

// reportAudit reads the whole audit log once: it verifies it against the
// signed checkpoint (and the remembered one, read only) and keeps the
// events the report reads.
func reportAudit(ctx context.Context, c *client.Client, in *report.Input, verify bool, stateDir string) error {
	head, err := c.Audit.Checkpoint(ctx, &wardv1.CheckpointRequest{})
	if err != nil {
		return err
	}
	cp, err := checkpoint.Parse(head.Checkpoint)
	if err != nil {
		return fmt.Errorf("the authority's checkpoint: %w", err)
	}
	pub, err := checkpoint.ParsePublicKeyPEM(head.PublicKeyPem)
	if err != nil {
		return fmt.Errorf("the authority's public key: %w", err)
	}
	in.Audit = report.Audit{Checked: verify, Origin: cp.Origin, Size: cp.Size, Root: hex.EncodeToString(cp.RootHash), KeyID: cp.KeyID, Time: cp.Time}
	wits := witnessChecks(head.Cosignatures, cp, pub)
	for _, w := range wits {
		if w.err == nil {
			in.Audit.Witnesses = append(in.Audit.Witnesses, report.Witness{TrustDomain: w.td, Size: w.cs.Checkpoint.Size, Time: w.cs.Time})
		}
	}
	var vs []*audit.Verifier
	var vm *audit.Verifier
	if verify {
		vs = append(vs, audit.NewVerifier(audit.VerifyOptions{Head: cp, PublicKey: pub}))
		remembered, problem := rememberedCheckpoint(stateDir, cp)
		if problem != "" {
			in.Audit.Problems = append(in.Audit.Problems, problem)
		}
		if remembered != nil {
			vm = audit.NewVerifier(audit.VerifyOptions{Head: cp, PublicKey: pub, Earlier: remembered})
			vs = append(vs, vm)
			in.Audit.RememberedSize = remembered.Size
		}
		for _, w := range wits {
			if w.v != nil {
				vs = append(vs, w.v)
			}
		}
	}
	stream, err := c.Audit.Read(ctx, &wardv1.ReadAuditRequest{Start: 0, End: cp.Size})
	if err != nil {
		return err
	}
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		rec := audit.Record{Seq: r.Seq, Leaf: r.Leaf}
		if r.Error != "" {
			rec.Err = errors.New(r.Error)
			if r.Missing {
				rec.Err = fmt.Errorf("%w: %s", store.ErrNotFound, r.Error)
			}
		}
		for _, v := range vs {
			v.Add(rec)
		}
		if rec.Err != nil {
			continue
		}
		if !slices.Contains(report.Operations, leafOperation(r.Leaf)) {
			continue // most events: no need to decode them
		}
		ev, err := audit.DecodeEvent(r.Leaf)
		if err != nil || !slices.Contains(report.Operations, ev.Operation) {
			continue
		}
		if ev.Operation == anomaly.Operation {
			if ev.Actor == anomalyActor {
				a := alertFromEvent(ev)
				in.Alerts = append(in.Alerts, report.Alert{Seq: ev.Seq, Time: a.Time, Kind: a.Kind, Caller: a.Caller, Key: a.Key, Detail: a.Detail})
			}
			continue
		}
		in.Events = append(in.Events, report.Event{Seq: ev.Seq, Time: ev.Time, Actor: ev.Actor, Operation: ev.Operation, Key: ev.Key,
			KeyVersion: ev.KeyVersion, Result: ev.Result, Fields: ev.Fields})
	}
	if !verify {
		return nil
	}
	rep := vs[0].Finish()
	in.Audit.Verified = rep.OK() && len(in.Audit.Problems) == 0
	for _, p := range rep.Problems {
		in.Audit.Problems = append(in.Audit.Problems, p.String())
	}
	if rep.Omitted > 0 {
		in.Audit.Problems = append(in.Audit.Problems, fmt.Sprintf("... and %d more record problems", rep.Omitted))
	}
	if vm != nil {
		if mrep := vm.Finish(); !mrep.Consistent {
			in.Audit.Verified = false
			in.Audit.Problems = append(in.Audit.Problems, fmt.Sprintf("AUDIT LOG ROLLBACK: the log does not extend the checkpoint of %d events remembered by an earlier verification", in.Audit.RememberedSize))
		}
	}
	for _, w := range wits {
		switch {
		case w.err != nil:
			in.Audit.Verified = false
			in.Audit.Problems = append(in.Audit.Problems, fmt.Sprintf("witness %s: %v", w.td, w.err))
		case w.v != nil && !w.v.Finish().Consistent:
			in.Audit.Verified = false
			in.Audit.Problems = append(in.Audit.Problems, fmt.Sprintf("witness %s cosigned %d events that the log does not extend", w.td, w.cs.Checkpoint.Size))
		}
	}
	return nil
}

// rememberedCheckpoint is the checkpoint 'ward audit verify' remembered for
// this log, if any (read only: the report never moves the memory).
// A rollback the memory detects is returned as a problem.
func rememberedCheckpoint(stateDir string, cp checkpoint.Checkpoint) (*checkpoint.Checkpoint, string) {
	dir, err := checkpointDir(stateDir)
	if err != nil {
		return nil, ""
	}
	if _, err := os.Stat(dir); err != nil {
		return nil, "" // never verified from here
	}
	mem, err := checkpoint.OpenDirMemory(dir)
	if err != nil {
		return nil, ""
	}
	w := checkpoint.NewWitness(mem)
	// As `ward audit verify`: a log signed by another key than the one
	// remembered for its origin is refused there (the memory under the
	// new key is empty, so CheckLog alone would find nothing to compare).
	var kc *checkpoint.KeyChangedError
	if err := w.CheckKey(cp); errors.As(err, &kc) {
		return nil, fmt.Sprintf("AUDIT SIGNING KEY CHANGED: the log of %s is signed by key %s, but `ward audit verify` remembered key %s (%s); if the change is expected, run `ward audit verify --accept-new-key`", kc.Origin, kc.NewKeyID, kc.OldKeyID, kc.Path)
	}
	remembered, _, err := w.CheckLog(cp)
	var rb *checkpoint.RollbackError
	if errors.As(err, &rb) {
		return nil, "AUDIT LOG ROLLBACK: " + err.Error()
	}
	if err != nil {
		return nil, ""
	}
	return remembered, ""
}

// scrapeProxyMetrics reads one proxy's /metrics page.
func scrapeProxyMetrics(ctx context.Context, url string) (report.Coverage, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return report.Coverage{}, fmt.Errorf("--proxy-metrics %s: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return report.Coverage{}, fmt.Errorf("--proxy-metrics %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return report.Coverage{}, fmt.Errorf("--proxy-metrics %s: %s", url, resp.Status)
	}
	return report.ProxyCoverage(url, resp.Body)
}

// leafOperation reads the operation of an audit leaf (an Event's JSON,
// whose "operation" field holds a plain name) without decoding the rest;
// "" when it is not found. A leaf it misreads is only decoded or skipped
// for nothing: DecodeEvent decides.
func leafOperation(leaf []byte) string {
	const key = `"operation":"`
	i := bytes.Index(leaf, []byte(key))
	if i < 0 {
		return ""
	}
	rest := leaf[i+len(key):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 || j > 64 {
		return ""
	}
	return string(rest[:j])
}
