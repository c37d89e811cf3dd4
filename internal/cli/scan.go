package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/governance/scan"
)

// exitScanFindings: ward scan found something at or above --fail-on.
const exitScanFindings = 2

func init() { register(func(root *cobra.Command) { root.AddCommand(scanCmd()) }) }

func scanCmd() *cobra.Command {
	var (
		bundleFile, serverName, spiffeID, failOn string
		asJSON, asSARIF                          bool
		timeout                                  time.Duration
		concurrency, parallel                    int
	)
	cmd := &cobra.Command{
		Use:   "scan HOST:PORT...",
		Short: "Scan TLS endpoints: versions, cipher suites, groups (post-quantum), client auth, chain, names, OCSP; graded findings",
		Long: "Scan TLS endpoints: the protocol versions offered (SSLv3 to TLS 1.3) and the cipher suites of\n" +
			"each, the key-exchange groups (is X25519MLKEM768 offered and preferred?), whether a client\n" +
			"certificate is required, the chain (verified against --bundle, else the authority's bundle when\n" +
			"--address or $WARD_ADDRESS names one, else the system roots), the host name (--server-name) or\n" +
			"SPIFFE ID (--spiffe-id), and a stapled OCSP response. Findings are graded by the rubric in\n" +
			"docs/scan.md. Exit status: 0, or 2 when a finding is at or above --fail-on (1 on errors).",
		Example: "  ward scan 127.0.0.1:8443 --spiffe-id spiffe://prod.example/ns/shop/api\n" +
			"  ward scan api.example.com:443 --fail-on medium --sarif > scan.sarif",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
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
			opts := scan.Options{ServerName: serverName, SPIFFEID: spiffeID, Timeout: timeout, Concurrency: concurrency}
			var err error
			if opts.Roots, opts.RootsName, err = scanRoots(cmd, bundleFile, spiffeID); err != nil {
				return err
			}
			results := scan.New(opts).ScanAll(cmd.Context(), args, parallel)
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
	return cmd
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
