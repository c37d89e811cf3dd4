package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/governance/drift"
	"github.com/wardproject/ward/internal/governance/scan"
	"github.com/wardproject/ward/internal/shared/atomicfile"
	"github.com/wardproject/ward/internal/shared/posture"
)

// exitDriftFindings: ward drift found something at or above --fail-on.
const exitDriftFindings = 2

func init() {
	register(func(root *cobra.Command) { root.AddCommand(postureCommand()) }, "posture")
	register(func(root *cobra.Command) { root.AddCommand(driftCommand()) }, "drift")
}

// readPostureFile reads FILE (or - for stdin), bounded, and parses it as
// the authority will (without the classification check, which the
// authority does), so errors show before anything is sent.
func readPostureFile(cmd *cobra.Command, file string) ([]byte, error) {
	var r io.Reader
	if file == "-" {
		r = cmd.InOrStdin()
	} else {
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, posture.MaxFileBytes+1))
	if err != nil {
		return nil, err
	}
	if _, err := posture.Parse(b, nil); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return b, nil
}

func postureCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "posture", Short: "The declared security posture (policy as code, docs/governance.md): set, get, history"}
	var file, comment string
	set := &cobra.Command{
		Use: "set -f FILE", Short: "Validate a posture file strictly and store it as the new version (nothing changes on error)", Args: cobra.NoArgs,
		Example: "  ward posture set -f posture.yaml -m 'TLS 1.3 only'",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return fmt.Errorf("-f FILE is required (- reads stdin)")
			}
			b, err := readPostureFile(cmd, file)
			if err != nil {
				return err
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				v, err := c.Posture.SetPosture(ctx, &wardv1.SetPostureRequest{File: b, Comment: comment})
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Posture version %d stored, digest %s.\n", v.Number, v.Digest[:16])
				return nil
			})
		},
	}
	set.Flags().StringVarP(&file, "file", "f", "", "the posture file (YAML; - for stdin)")
	set.Flags().StringVarP(&comment, "message", "m", "", "a note stored with the version")

	var out string
	get := &cobra.Command{
		Use: "get [VERSION]", Short: "Print a posture version's file (default: the current one)", Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var n uint64
			if len(args) == 1 {
				var err error
				if n, err = versionArg(args[0], "ward posture history"); err != nil {
					return err
				}
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				v, err := c.Posture.GetPosture(ctx, &wardv1.GetPostureRequest{Version: n})
				if err != nil {
					return err
				}
				if out != "" {
					return atomicfile.Write(out, v.File, 0o644)
				}
				_, err = cmd.OutOrStdout().Write(v.File)
				return err
			})
		},
	}
	get.Flags().StringVarP(&out, "output", "o", "", "write the file here instead of stdout")

	history := &cobra.Command{
		Use: "history", Short: "List posture versions", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				r, err := c.Posture.ListPostureVersions(ctx, &wardv1.ListPostureVersionsRequest{})
				if err != nil {
					return err
				}
				t := newVersionTable(cmd.OutOrStdout(), "DIGEST", "NOTE")
				for _, v := range r.Versions {
					t.row(v.Number, v.Current, v.Created, v.Actor, v.Digest[:16], v.Comment)
				}
				return t.flush()
			})
		},
	}
	cmd.AddCommand(set, get, history)
	return cmd
}

// driftResult is what ward drift --json prints: the report, the rules that
// applied and the state evaluated.
type driftResult struct {
	posture.Report
	Rules posture.Rules `json:"rules"`
	State posture.State `json:"state"`
}

func driftCommand() *cobra.Command {
	var (
		asJSON, latest, doScan bool
		failOn                 string
		targets                []string
		timeout                time.Duration
	)
	cmd := &cobra.Command{
		Use:   "drift",
		Short: "Compare the declared posture with the authority's state, its nodes' telemetry and (--scan) scans",
		Long: "Compare the declared posture (ward posture set) with what is: the authority's keys, entries,\n" +
			"policy and federation bundles, the telemetry its proxies, gateways and agents report and, with\n" +
			"--scan, a scan of every listener they report (and of --target endpoints). Each finding names the\n" +
			"object, the rule, the evidence and the fix (docs/governance.md). Exit status: 0, or 2 when a\n" +
			"finding is at or above --fail-on (1 on errors).",
		Example: "  ward drift\n  ward drift --scan --json > drift.json\n  ward drift --fail-on high   # in CI",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			threshold := posture.Critical + 1
			if failOn != "never" {
				var err error
				if threshold, err = posture.ParseSeverity(failOn); err != nil {
					return fmt.Errorf("--fail-on: %w (or never)", err)
				}
			}
			var res driftResult
			err := withClient(cmd, func(ctx context.Context, c *client.Client) error {
				d, err := c.Posture.GetDrift(ctx, &wardv1.GetDriftRequest{Latest: latest})
				if err != nil {
					return err
				}
				if err := json.Unmarshal(d.Report, &res.Report); err != nil {
					return fmt.Errorf("the authority's drift report: %w", err)
				}
				if err := json.Unmarshal(d.Rules, &res.Rules); err != nil {
					return fmt.Errorf("the authority's posture rules: %w", err)
				}
				if err := json.Unmarshal(d.State, &res.State); err != nil {
					return fmt.Errorf("the authority's state: %w", err)
				}
				return nil
			})
			if err != nil {
				return err
			}
			if res.PostureVersion == 0 {
				return fmt.Errorf("no posture has been declared: declare one with `ward posture set -f FILE` (docs/governance.md)")
			}
			if doScan || len(targets) > 0 {
				var want []posture.Scan
				if doScan {
					want = drift.Targets(res.State)
				}
				for _, t := range targets {
					want = append(want, posture.Scan{Target: t})
				}
				addrs := make([]string, len(want))
				for i, w := range want {
					addrs[i] = w.Target
				}
				results := scan.New(scan.Options{Timeout: timeout}).ScanAll(cmd.Context(), addrs, 4)
				for i, r := range results {
					s := drift.FromScan(*r)
					s.Node, s.Listener, s.Service = want[i].Node, want[i].Listener, want[i].Service
					res.State.Scans = append(res.State.Scans, s)
				}
				// The authority evaluated without scans: evaluate again with
				// them, by the same rules.
				res.Findings = drift.Evaluate(res.Rules, res.State)
			}
			if res.Findings == nil {
				res.Findings = []posture.Finding{}
			}
			w := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				if err := enc.Encode(res); err != nil {
					return err
				}
			} else if err := writeDriftTable(w, res); err != nil {
				return err
			}
			if worst := posture.Worst(res.Findings); worst != 0 && worst >= threshold {
				return &exitError{code: exitDriftFindings, err: fmt.Errorf("%d drift finding(s), the worst %s (--fail-on %s)", len(res.Findings), worst, failOn)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&asJSON, "json", false, "print JSON: the findings, the rules that applied and the state evaluated")
	f.BoolVar(&latest, "latest", false, "show the authority's latest periodic evaluation instead of evaluating now")
	f.BoolVar(&doScan, "scan", false, "also scan every inbound and gateway listener the nodes report (ward scan) and compare what they offer")
	f.StringSliceVar(&targets, "target", nil, "also scan HOST:PORT (repeatable)")
	f.StringVar(&failOn, "fail-on", "low", "exit 2 when a finding is at or above this severity: low, medium, high, critical, never")
	f.DurationVar(&timeout, "timeout", 5*time.Second, "timeout of each scan connection")
	return cmd
}

func writeDriftTable(w io.Writer, res driftResult) error {
	fmt.Fprintf(w, "Posture version %d (%s) for %s, evaluated %s: %d finding(s); %d keys, %d entries, %d services, %d bundles, %d reporting nodes, %d scans.\n",
		res.PostureVersion, res.Scope, res.TrustDomain, res.Evaluated, len(res.Findings),
		len(res.State.Keys), len(res.State.Entries), len(res.State.Services), len(res.State.Bundles), len(res.State.Nodes), len(res.State.Scans))
	if len(res.Findings) == 0 {
		_, err := fmt.Fprintln(w, "No drift: what runs matches the declared posture.")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEVERITY\tRULE\tOBJECT\tSOURCE")
	for _, f := range res.Findings {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", strings.ToUpper(f.Severity.String()), f.Rule, f.Object, f.Source)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for i, f := range res.Findings {
		fmt.Fprintf(w, "\n%d. %s %s\n   evidence: %s\n   fix:      %s\n", i+1, f.Rule, f.Object, f.Evidence, f.Fix)
	}
	return nil
}
