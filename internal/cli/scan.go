package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/governance/drift"
	"github.com/wardproject/ward/internal/governance/scan"
	"github.com/wardproject/ward/internal/shared/posture"
)

// exitScanFindings: ward scan found something at or above --fail-on.
const exitScanFindings = 2

func init() { register(func(root *cobra.Command) { root.AddCommand(scanCmd()) }, "scan") }

func scanCmd() *cobra.Command {
	var (
		bundleFile, serverName, spiffeID, failOn string
		asJSON, asSARIF, reported, crl           bool
		timeout                                  time.Duration
		concurrency, parallel                    int
	)
	cmd := &cobra.Command{
		Use:   "scan [HOST:PORT...] [--reported]",
		Short: "Scan TLS endpoints: versions, cipher suites, groups (post-quantum), client auth, chain, names, OCSP, CRLs; graded findings",
		Long: "Scan TLS endpoints: the protocol versions offered (SSLv3 to TLS 1.3) and the cipher suites of\n" +
			"each, the key-exchange groups (is X25519MLKEM768 offered and preferred?), whether a client\n" +
			"certificate is required, the chain (verified against --bundle, else the authority's bundle when\n" +
			"--address or $WARD_ADDRESS names one, else the system roots), the host name (--server-name) or\n" +
			"SPIFFE ID (--spiffe-id), a stapled OCSP response, and the CRLs the chain names (--crl). Findings\n" +
			"are graded by the rubric in\n" +
			"docs/scan.md. --reported also scans every inbound and gateway listener the authority's proxies\n" +
			"and gateways report (telemetry), each checked against the SPIFFE ID the listener says it presents.\n" +
			"Exit status: 0, or 2 when a finding is at or above --fail-on (1 on errors).",
		Example: "  ward scan 127.0.0.1:8443 --spiffe-id spiffe://prod.example/ns/shop/api\n" +
			"  ward scan api.example.com:443 --fail-on medium --sarif > scan.sarif\n" +
			"  ward scan --reported --address unix:///run/ward/admin.sock --sarif > mesh.sarif",
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 && !reported {
				return fmt.Errorf("name HOST:PORT endpoints to scan, or --reported for the listeners the authority knows of")
			}
			if asJSON && asSARIF {
				return fmt.Errorf("--json and --sarif: choose one")
			}
			threshold := scan.Critical + 1 // never
			if failOn != "never" {
				var err error
				if threshold, err = scan.ParseSeverity(failOn); err != nil {
					return fmt.Errorf("--fail-on: %w (or never)", err)
				}
			}
			if spiffeID != "" {
				if _, err := spiffeid.FromString(spiffeID); err != nil {
					return fmt.Errorf("--spiffe-id %q: %w", spiffeID, err)
				}
			}
			opts := scan.Options{ServerName: serverName, SPIFFEID: spiffeID, Timeout: timeout, Concurrency: concurrency, CheckCRLs: crl}
			var err error
			if opts.Roots, opts.RootsName, err = scanRoots(cmd, bundleFile, spiffeID); err != nil {
				return err
			}
			results := scan.New(opts).ScanAll(cmd.Context(), args, parallel)
			if reported {
				more, err := scanReported(cmd, opts, parallel, args)
				if err != nil {
					return err
				}
				results = append(results, more...)
			}
			out := cmd.OutOrStdout()
			switch {
			case asJSON:
				err = scan.WriteJSON(out, results)
			case asSARIF:
				err = scan.WriteSARIF(out, results, "ward")
			default:
				err = scan.WriteTable(out, results)
			}
			if err != nil {
				return err
			}
			for _, r := range results {
				if len(r.Findings) > 0 && scan.Worst(r.Findings) >= threshold {
					return &exitError{code: exitScanFindings, err: fmt.Errorf("%s: a finding at or above %s (--fail-on)", r.Target, failOn)}
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&bundleFile, "bundle", "", "trust bundle FILE to verify chains against: PEM certificates or SPIFFE bundle JSON")
	f.StringVar(&serverName, "server-name", "", "SNI to send and host name to check (default: the target's host when it is a name)")
	f.StringVar(&spiffeID, "spiffe-id", "", "SPIFFE ID the server's certificate must carry")
	f.StringVar(&failOn, "fail-on", "high", "exit 2 when a finding is at or above this severity: info, low, medium, high, critical, never")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	f.BoolVar(&asSARIF, "sarif", false, "print SARIF 2.1.0 (for code-scanning dashboards)")
	f.DurationVar(&timeout, "timeout", 5*time.Second, "timeout of each connection")
	f.IntVar(&concurrency, "concurrency", 8, "connections open at once per endpoint")
	f.IntVar(&parallel, "parallel", 4, "endpoints scanned at once")
	f.BoolVar(&crl, "crl", false, "also fetch the CRLs the served certificates name and report a certificate they list as revoked (off by default: the scanned server chooses those URLs, so the scan would make requests it names from where it runs; http and https only, at most 4 MiB each within --timeout, no redirects, never link-local addresses)")
	f.BoolVar(&reported, "reported", false, "also scan every inbound and gateway listener the authority's nodes report (needs --address or $WARD_ADDRESS)")
	return cmd
}

// scanReported scans the listeners the authority's nodes report in their
// telemetry (the state of its drift evaluation): inbound proxy listeners
// and gateways on TCP addresses, skipping those already in named. Each is
// checked against the SPIFFE ID its listener reports presenting, unless
// --spiffe-id names one for all.
func scanReported(cmd *cobra.Command, opts scan.Options, parallel int, named []string) ([]*scan.Result, error) {
	var st posture.State
	err := withClient(cmd, func(ctx context.Context, c *client.Client) error {
		d, err := c.Posture.GetDrift(ctx, &wardv1.GetDriftRequest{Latest: true})
		if status.Code(err) == codes.FailedPrecondition {
			return fmt.Errorf("the authority has no telemetry of its nodes (drift evaluation is not wired into it): %w", err)
		} else if err != nil {
			return err
		}
		return json.Unmarshal(d.State, &st)
	})
	if err != nil {
		return nil, fmt.Errorf("--reported: %w", err)
	}
	ids := map[string]string{}
	for _, n := range st.Nodes {
		for _, p := range n.Processes {
			for _, l := range p.Listeners {
				if l.SPIFFEID != "" && ids[l.Address] == "" {
					ids[l.Address] = l.SPIFFEID
				}
			}
		}
	}
	var targets []posture.Scan
	for _, t := range drift.Targets(st) {
		if !slices.Contains(named, t.Target) {
			targets = append(targets, t)
		}
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "%d listener(s) reported by %d node(s)\n", len(targets), len(st.Nodes))
	out := make([]*scan.Result, len(targets))
	sem := make(chan struct{}, max(parallel, 1))
	var wg sync.WaitGroup
	for i, t := range targets {
		o := opts
		if o.SPIFFEID == "" {
			o.SPIFFEID = ids[t.Target]
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			r := scan.New(o).Scan(cmd.Context(), t.Target)
			r.Source = fmt.Sprintf("reported by node %s: listener %s", t.Node, t.Listener)
			if t.Service != "" {
				r.Source += " of service " + t.Service
			}
			out[i] = r
		}()
	}
	wg.Wait()
	return out, nil
}

// scanRoots picks the roots chains are verified against: --bundle, else
// the authority's bundle when an authority is named, else the system's.
func scanRoots(cmd *cobra.Command, file, spiffeID string) (*x509.CertPool, string, error) {
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, "", fmt.Errorf("--bundle: %w", err)
		}
		pool, err := parseBundle(data, spiffeID)
		if err != nil {
			return nil, "", fmt.Errorf("--bundle %s: %w", file, err)
		}
		return pool, "bundle " + file, nil
	}
	addr, _ := cmd.Flags().GetString("address")
	if addr == "" && os.Getenv("WARD_ADDRESS") == "" {
		return nil, "system roots", nil
	}
	var pool *x509.CertPool
	var td string
	err := withIdentity(cmd, func(ctx context.Context, c identityClients) error {
		b, err := c.ca.GetBundle(ctx, &wardv1.GetBundleRequest{})
		if err != nil {
			return err
		}
		td = b.TrustDomain
		pool, err = parseBundle(b.X509Pem, "")
		return err
	})
	if err != nil {
		return nil, "", fmt.Errorf("the authority's trust bundle (give --bundle FILE to scan without an authority): %w", err)
	}
	return pool, "authority " + td, nil
}

// parseBundle reads PEM certificates or a SPIFFE bundle (JSON).
func parseBundle(data []byte, spiffeID string) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if t := bytes.TrimSpace(data); len(t) > 0 && t[0] == '{' {
		td := spiffeid.RequireTrustDomainFromString("bundle.invalid")
		if id, err := spiffeid.FromString(spiffeID); err == nil {
			td = id.TrustDomain()
		}
		b, err := spiffebundle.Parse(td, data)
		if err != nil {
			return nil, err
		}
		for _, c := range b.X509Authorities() {
			pool.AddCert(c)
		}
		if len(b.X509Authorities()) == 0 {
			return nil, fmt.Errorf("no X.509 authorities in the SPIFFE bundle")
		}
		return pool, nil
	}
	n := 0
	for rest := data; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("no PEM certificates")
	}
	return pool, nil
}
