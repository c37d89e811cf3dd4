package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/authority/dashboard"
	"github.com/wardproject/ward/internal/authority/server"
	"github.com/wardproject/ward/internal/governance/anomaly"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

func init() {
	register(func(root *cobra.Command) { root.AddCommand(anomalyCommand()) }, "anomaly")
}

// anomalyActor is the actor of the "anomaly.alert" audit events.
const anomalyActor = "system:anomaly"

// anomalyConfig maps the server configuration's anomaly section onto the
// detector's thresholds (both validate; the config names the YAML fields).
func anomalyConfig(a config.Anomaly) anomaly.Config {
	return anomaly.Config{
		RestrictedClassifications: a.RestrictedClassifications,
		Alpha:                     a.Alpha, Sigma: a.Sigma, Factor: a.Factor,
		MinDecrypts: a.MinDecryptsPerMinute, MinDenials: a.MinDenialsPerMinute,
		LearningPeriod: time.Duration(a.LearningPeriod), Cooldown: time.Duration(a.Cooldown),
		HourBaseline: time.Duration(a.HourBaseline), HourMinEvents: a.HourMinEvents,
		MaxSeries: a.MaxSeries, QueueSize: a.QueueSize,
		WebhookURL: a.WebhookURL, WebhookTimeout: time.Duration(a.WebhookTimeout),
	}
}

// wireAnomaly builds the anomaly detector of an authority (unless
// disabled): it sees every committed audit event through the server's
// observer (a non-blocking Submit), records its alerts back into the log
// as "anomaly.alert" events, and exports its metrics on /metrics. The
// returned function stops it.
func wireAnomaly(srv *server.Server, cfg config.Anomaly, log *slog.Logger) (func(), error) {
	if cfg.Disabled {
		return func() {}, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	recent := &alertRing{}
	srv.SetDashboardExtras(dashboard.Extras{Anomalies: recent.list})
	d, err := anomaly.New(anomalyConfig(cfg),
		anomaly.WithClassifier(func(key string) string { return srv.KeyClassification(ctx, key) }),
		anomaly.WithPrimer(func(ctx context.Context, _ time.Time, prime func(anomaly.Event)) error {
			n := uint64(cfg.PrimeEvents)
			if n == 0 {
				n = 100000
			}
			return srv.ReadRecentAudit(ctx, n, func(ev audit.Event) {
				if ev.Operation == anomaly.Operation && ev.Actor == anomalyActor {
					recent.add(alertFromEvent(ev))
				}
				for _, e := range anomalyEvents(ev) {
					prime(e)
				}
			})
		}),
		anomaly.WithSink(func(ctx context.Context, a anomaly.Alert) {
			log.Warn("anomaly alert", "kind", a.Kind, "caller", a.Caller, "key", a.Key, "detail", a.Detail)
			recent.add(a)
			if err := srv.RecordEvent(ctx, alertEvent(a)); err != nil {
				log.Error("could not audit an anomaly alert", "err", err, "kind", a.Kind)
			}
		}))
	if err != nil {
		cancel()
		return nil, err
	}
	for _, c := range d.Collectors() {
		if err := srv.Registerer().Register(c); err != nil {
			cancel()
			return nil, err
		}
	}
	submit := func(ev audit.Event) {
		for _, e := range anomalyEvents(ev) {
			d.Submit(e)
		}
	}
	if srv.Clustered() {
		// Several authorities share the log: the leader alone follows
		// it (everyone's events), so each unusual use is scored once,
		// against one baseline (docs/ha.md).
		srv.AddLeaderJob(func(ctx context.Context) {
			if err := srv.FollowAudit(ctx, submit); err != nil && ctx.Err() == nil {
				log.Warn("anomaly: following the audit log stopped", "err", err)
			}
		})
	} else {
		srv.SetAuditObserver(submit)
	}
	done := make(chan struct{})
	go func() { defer close(done); d.Run(ctx) }()
	return func() { cancel(); <-done }, nil
}

// alertRing keeps the newest alerts for the dashboard.
type alertRing struct {
	mu     sync.Mutex
	alerts []anomaly.Alert
}

const alertRingSize = 100

func (r *alertRing) add(a anomaly.Alert) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.alerts) >= alertRingSize {
		r.alerts = slices.Delete(r.alerts, 0, len(r.alerts)-alertRingSize+1)
	}
	r.alerts = append(r.alerts, a)
}

// list returns the alerts newest first, in the dashboard's form.
func (r *alertRing) list() []dashboard.Alert {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]dashboard.Alert, 0, len(r.alerts))
	for i := len(r.alerts) - 1; i >= 0; i-- {
		a := r.alerts[i]
		out = append(out, dashboard.Alert{Time: a.Time.UTC(), Kind: a.Kind, Caller: a.Caller, Key: a.Key, Detail: a.Detail})
	}
	return out
}

// anomalyEvents is what the detector reads of a committed audit event: one
// event, or one per key of a batch that names its keys (the items shared
// among them).
func anomalyEvents(ev audit.Event) []anomaly.Event {
	e := anomaly.Event{Time: ev.Time, Actor: ev.Actor, Operation: ev.Operation, Key: ev.Key, Result: ev.Result, Count: ev.Count}
	if ev.Operation == anomaly.Operation && ev.Actor == anomalyActor {
		a := alertFromEvent(ev)
		e.Alert = &a
		return []anomaly.Event{e}
	}
	keys := ev.Fields["keys"]
	if ev.Key != "" || keys == "" {
		return []anomaly.Event{e}
	}
	names := strings.Split(keys, ",")
	out := make([]anomaly.Event, 0, len(names))
	for _, k := range names {
		e.Key, e.Count = k, max(ev.Count/len(names), 1)
		out = append(out, e)
	}
	return out
}

// alertEvent is the audit form of an alert: names and numbers only.
func alertEvent(a anomaly.Alert) audit.Event {
	ctx := reqctx.With(context.Background(), reqctx.Caller{Actor: anomalyActor, RequestID: reqctx.NewRequestID()})
	ev := audit.NewEvent(ctx, anomaly.Operation, audit.ResultOK)
	ev.Key = a.Key
	f := map[string]string{"kind": a.Kind, "caller": a.Caller, "detail": a.Detail, "at": a.Time.Format(time.RFC3339Nano)}
	put := func(k, v string) {
		if v != "" {
			f[k] = v
		}
	}
	num := func(k string, v float64) {
		if v != 0 {
			f[k] = strconv.FormatFloat(v, 'g', 6, 64)
		}
	}
	put("operation", a.Operation)
	put("classification", a.Classification)
	put("trust_domain", a.TrustDomain)
	num("observed", a.Observed)
	num("baseline", a.Baseline)
	num("stddev", a.Stddev)
	num("threshold", a.Threshold)
	num("hour_share", a.HourShare)
	ev.Fields = f
	return ev
}

// alertFromEvent reads an alert back from its audit event.
func alertFromEvent(ev audit.Event) anomaly.Alert {
	f := ev.Fields
	num := func(k string) float64 { v, _ := strconv.ParseFloat(f[k], 64); return v }
	t, err := time.Parse(time.RFC3339Nano, f["at"])
	if err != nil {
		t = ev.Time
	}
	return anomaly.Alert{Time: t, Kind: f["kind"], Caller: f["caller"], Key: ev.Key, Operation: f["operation"],
		Classification: f["classification"], TrustDomain: f["trust_domain"], Observed: num("observed"), Baseline: num("baseline"),
		Stddev: num("stddev"), Threshold: num("threshold"), HourShare: num("hour_share"), Detail: f["detail"]}
}

func anomalyCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "anomaly", Short: "Anomaly alerts on key access (docs/anomaly.md)"}
	var scan uint64
	var limit int
	var asJSON bool
	list := &cobra.Command{
		Use: "list", Short: "Show recent anomaly alerts (read from the audit log)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := dial(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			stream, err := c.Audit.Tail(cmd.Context(), &wardv1.TailAuditRequest{Last: scan})
			if err != nil {
				return client.Unwrap(err)
			}
			var alerts []anomaly.Alert
			for {
				r, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return client.Unwrap(err)
				}
				if r.Error != "" {
					continue
				}
				ev, err := audit.DecodeEvent(r.Leaf)
				if err != nil || ev.Operation != anomaly.Operation || ev.Actor != anomalyActor {
					continue
				}
				alerts = append(alerts, alertFromEvent(ev))
			}
			if limit > 0 && len(alerts) > limit {
				alerts = alerts[len(alerts)-limit:]
			}
			out := cmd.OutOrStdout()
			if asJSON {
				if alerts == nil {
					alerts = []anomaly.Alert{}
				}
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(alerts)
			}
			if len(alerts) == 0 {
				fmt.Fprintf(out, "no anomaly alerts in the last %d audit events\n", scan)
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tKIND\tCALLER\tKEY\tOBSERVED\tTHRESHOLD\tDETAIL")
			for _, a := range alerts {
				obs, thr := "-", "-"
				if a.Threshold != 0 {
					obs, thr = strconv.FormatFloat(a.Observed, 'f', 0, 64), strconv.FormatFloat(a.Threshold, 'f', 0, 64)
				}
				detail := a.Detail
				if a.TrustDomain != "" {
					detail += " (" + a.TrustDomain + ")"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.Time.UTC().Format(time.RFC3339), a.Kind, a.Caller, a.Key, obs, thr, detail)
			}
			return tw.Flush()
		},
	}
	list.Flags().Uint64Var(&scan, "scan", 100000, "how many of the newest audit events to search for alerts")
	list.Flags().IntVarP(&limit, "limit", "n", 50, "show at most this many of the newest alerts (0: all found)")
	list.Flags().BoolVar(&asJSON, "json", false, "print the alerts as JSON")
	cmd.AddCommand(list)
	return cmd
}
