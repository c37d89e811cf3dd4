package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
)

func init() {
	register(func(root *cobra.Command) { root.AddCommand(federationCommand()) }, "federation")
}

func withFederation(cmd *cobra.Command, f func(ctx context.Context, c wardv1.FederationClient) error) error {
	return withClient(cmd, func(ctx context.Context, c *client.Client) error { return f(ctx, c.Federation) })
}

func fedTime(t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	return t.AsTime().Local().Format(time.DateTime)
}

func fedSequence(r *wardv1.FederationRelationship) string {
	switch {
	case len(r.BundleSpiffeJson) == 0:
		return "none"
	case !r.HasSequence:
		return "-"
	}
	return fmt.Sprint(r.Sequence)
}

func printFederation(w io.Writer, r *wardv1.FederationRelationship) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Trust domain:\t%s\n", r.TrustDomain)
	fmt.Fprintf(tw, "Endpoint:\t%s (%s)\n", r.EndpointUrl, r.Profile)
	if r.EndpointSpiffeId != "" {
		fmt.Fprintf(tw, "Endpoint ID:\t%s\n", r.EndpointSpiffeId)
	}
	fmt.Fprintf(tw, "Declared by:\t%s\n", r.Source)
	fmt.Fprintf(tw, "Bundle sequence:\t%s\n", fedSequence(r))
	fmt.Fprintf(tw, "Refresh hint:\t%s\n", time.Duration(r.RefreshHintSeconds)*time.Second)
	fmt.Fprintf(tw, "Added:\t%s\n", fedTime(r.Added))
	fmt.Fprintf(tw, "Last refresh:\t%s\n", fedTime(r.LastRefresh))
	fmt.Fprintf(tw, "Last attempt:\t%s\n", fedTime(r.LastAttempt))
	fmt.Fprintf(tw, "Next refresh:\t%s\n", fedTime(r.NextRefresh))
	if r.LastError != "" {
		fmt.Fprintf(tw, "Last error:\t%s (%d failures in a row)\n", r.LastError, r.Failures)
	}
	if r.Stale {
		fmt.Fprintf(tw, "STALE:\tnot refreshed for several refresh hints; workloads validate with the last good bundle\n")
	}
	if r.Profile == "https_spiffe" {
		rev := "none received yet"
		if r.HasRevocations {
			rev = fmt.Sprintf("sequence %d, %d entries, received %s", r.RevocationsSequence, r.RevokedEntries, fedTime(r.RevocationsReceived))
		}
		fmt.Fprintf(tw, "Revocations:\t%s\n", rev)
		if r.RevocationError != "" {
			fmt.Fprintf(tw, "Revocation channel:\t%s\n", r.RevocationError)
		}
		gws := "the bundle endpoint's host only"
		if len(r.AllowedGateways) > 0 {
			gws = strings.Join(r.AllowedGateways, ", ")
		}
		fmt.Fprintf(tw, "Allowed gateways:\t%s\n", gws)
		if r.Network {
			net := "shared; no tunnels received yet"
			if r.NetworkSequence > 0 {
				net = fmt.Sprintf("shared; %d tunnels received (sequence %d)", r.NetworkTunnels, r.NetworkSequence)
			}
			fmt.Fprintf(tw, "Network:\t%s\n", net)
			ends := "anywhere but this cluster's own overlay and endpoint ranges"
			if len(r.NetworkEndpointCidrs) > 0 {
				ends = strings.Join(r.NetworkEndpointCidrs, ", ")
			}
			fmt.Fprintf(tw, "Network endpoints:\t%s\n", ends)
			if r.NetworkError != "" {
				fmt.Fprintf(tw, "Network channel:\t%s\n", r.NetworkError)
			}
		}
		wit := "nothing witnessed yet"
		if r.WitnessedSize > 0 || r.Witnessed != nil {
			wit = fmt.Sprintf("its audit log at %d events (root %x), cosigned %s; its checkpoint key %s", r.WitnessedSize, r.WitnessedRoot, fedTime(r.Witnessed), r.WitnessKeyId)
		}
		fmt.Fprintf(tw, "Audit witness:\t%s\n", wit)
		if r.CosignedByPeer != nil {
			fmt.Fprintf(tw, "Witnessed by it:\tthis authority's audit log at %d events, cosigned %s\n", r.CosignedByPeerSize, fedTime(r.CosignedByPeer))
		}
		if r.WitnessError != "" && r.WitnessAlert == nil {
			fmt.Fprintf(tw, "Witness error:\t%s\n", r.WitnessError)
		}
		if a := r.WitnessAlert; a != nil {
			fmt.Fprintf(tw, "AUDIT WITNESS ALERT:\t%s since %s (seen %d times): %s\n", a.Reason, fedTime(a.At), a.Count, a.Error)
		}
		if a := r.OwnLogAlert; a != nil {
			fmt.Fprintf(tw, "OWN AUDIT LOG ROLLBACK:\t%s since %s (seen %d times): %s\n", a.Reason, fedTime(a.At), a.Count, a.Error)
		}
	}
	_ = tw.Flush()
}

func federationCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "federation", Short: "Federate with other trust domains (SPIFFE Federation): add, list, show, refresh, update, remove"}
	var asJSON bool

	var endpoint, profile, endpointID, bundleFile string
	var network bool
	var allowedGateways, networkEndpoints []string
	add := &cobra.Command{
		Use:   "add TRUST-DOMAIN --endpoint URL [--profile https_spiffe] [--endpoint-id SPIFFE-ID] --bundle BOOTSTRAP-FILE",
		Short: "Trust a foreign trust domain: fetch its bundle from its bundle endpoint and keep it refreshed",
		Example: "  ward federation add b.example --endpoint https://127.0.0.1:8444 --bundle b.bundle.json\n" +
			"  (b.bundle.json: `ward ca bundle --format spiffe` run against b.example's authority)",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &wardv1.AddFederationRequest{TrustDomain: args[0], EndpointUrl: endpoint, Profile: profile, EndpointSpiffeId: endpointID, Network: network,
				AllowedGateways: allowedGateways, NetworkEndpointCidrs: networkEndpoints}
			if profile == "https_spiffe" && endpointID == "" {
				req.EndpointSpiffeId = "spiffe://" + args[0] + "/ward/server"
			}
			if bundleFile != "" {
				b, err := os.ReadFile(bundleFile)
				if err != nil {
					return fmt.Errorf("--bundle: %w", err)
				}
				req.BundleSpiffeJson = b
			}
			return withFederation(cmd, func(ctx context.Context, c wardv1.FederationClient) error {
				r, err := c.AddFederation(ctx, req)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Federated with %s; its bundle is fetched from %s now and on every refresh hint.\n\n", r.TrustDomain, r.EndpointUrl)
				printFederation(cmd.OutOrStdout(), r)
				return nil
			})
		},
	}
	add.Flags().StringVar(&endpoint, "endpoint", "", "https:// URL of the foreign bundle endpoint (required)")
	add.Flags().StringVar(&profile, "profile", "https_spiffe", "bundle endpoint profile: https_spiffe or https_web")
	add.Flags().StringVar(&endpointID, "endpoint-id", "", "SPIFFE ID the https_spiffe endpoint presents (default spiffe://TRUST-DOMAIN/ward/server)")
	add.Flags().StringVar(&bundleFile, "bundle", "", "bootstrap bundle of the foreign trust domain (SPIFFE bundle JSON; required for https_spiffe)")
	add.Flags().BoolVar(&network, "network", false, "share this cluster's WireGuard tunnels with the trust domain and relay its tunnels to agents whose network.federated names it (docs/network.md)")
	add.Flags().StringSliceVar(&allowedGateways, "allowed-gateway", nil, "where the trust domain's exported services may have their gateways: a CIDR prefix (10.20.0.0/16) or host:port (gw.b.example:15443, *.b.example:15443, gw.b.example:*); repeat or comma-separate; default: only the --endpoint host (docs/federation.md)")
	add.Flags().StringSliceVar(&networkEndpoints, "network-endpoint-cidr", nil, "with --network: where the trust domain's WireGuard endpoints may be (CIDR prefix, e.g. 198.51.100.0/24; repeat or comma-separate); a tunnel list naming an endpoint elsewhere is refused; default: anywhere but this cluster's network.overlay_cidrs and network.endpoint_cidrs (docs/network.md)")
	_ = add.MarkFlagRequired("endpoint")

	list := &cobra.Command{
		Use: "list", Short: "List federated trust domains with their bundle's sequence, refresh times and last error", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withFederation(cmd, func(ctx context.Context, c wardv1.FederationClient) error {
				r, err := c.ListFederations(ctx, &wardv1.ListFederationsRequest{})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(cmd.OutOrStdout(), r)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "TRUST DOMAIN\tSEQUENCE\tLAST REFRESH\tNEXT REFRESH\tLAST ERROR")
				for _, f := range r.Relationships {
					e := f.LastError
					if e == "" {
						e = "-"
					}
					if f.Stale {
						e = "STALE; " + e
					}
					if a := f.WitnessAlert; a != nil {
						e = "AUDIT WITNESS ALERT (" + a.Reason + "); " + e
					}
					if a := f.OwnLogAlert; a != nil {
						e = "OWN AUDIT LOG ROLLBACK (" + a.Reason + "); " + e
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", f.TrustDomain, fedSequence(f), fedTime(f.LastRefresh), fedTime(f.NextRefresh), e)
				}
				return tw.Flush()
			})
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var withBundle bool
	show := &cobra.Command{
		Use: "show TRUST-DOMAIN", Short: "Show one relationship (--bundle: print the foreign bundle in use)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withFederation(cmd, func(ctx context.Context, c wardv1.FederationClient) error {
				r, err := c.ShowFederation(ctx, &wardv1.ShowFederationRequest{TrustDomain: args[0]})
				if err != nil {
					return err
				}
				switch {
				case asJSON:
					return printJSON(cmd.OutOrStdout(), r)
				case withBundle:
					_, err := cmd.OutOrStdout().Write(append(r.BundleSpiffeJson, '\n'))
					return err
				}
				printFederation(cmd.OutOrStdout(), r)
				return nil
			})
		},
	}
	show.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	show.Flags().BoolVar(&withBundle, "bundle", false, "print the SPIFFE bundle JSON in use for the trust domain")

	refresh := &cobra.Command{
		Use: "refresh TRUST-DOMAIN", Short: "Fetch the foreign bundle now (a failure keeps the last good bundle) and witness its audit log (https_spiffe)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withFederation(cmd, func(ctx context.Context, c wardv1.FederationClient) error {
				r, err := c.RefreshFederation(ctx, &wardv1.RefreshFederationRequest{TrustDomain: args[0]})
				if status.Code(err) == codes.DataLoss {
					// An audit witness alert: the bundle was refreshed.
					return fmt.Errorf("%w (`ward federation show %s`)", err, args[0])
				}
				if err != nil {
					return fmt.Errorf("%w (the last good bundle stays in use; `ward federation show %s`)", err, args[0])
				}
				printFederation(cmd.OutOrStdout(), r)
				return nil
			})
		},
	}

	var clearEndpoints bool
	update := &cobra.Command{
		Use:   "update TRUST-DOMAIN (--network-endpoint-cidr CIDR... | --clear-network-endpoint-cidrs)",
		Short: "Change where a federated trust domain's WireGuard endpoints may be, in place (audited; its tunnels are checked again)",
		Long: "Changes the relationship's network_endpoint_cidrs without removing it: its bundle and state are kept, the\n" +
			"change is audited (federation.update, with the previous value), the tunnels already accepted from the trust\n" +
			"domain are relayed to agents only where the new bound allows, and a tunnel list the old bound refused is\n" +
			"fetched and checked again. Other fields of a relationship still change by remove and add (docs/network.md).",
		Example: "  ward federation update b.example --network-endpoint-cidr 198.51.100.0/24,203.0.113.0/24",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if clearEndpoints == (len(networkEndpoints) > 0) {
				return fmt.Errorf("give the new bound with --network-endpoint-cidr, or --clear-network-endpoint-cidrs for the default (anywhere but this cluster's own ranges)")
			}
			return withFederation(cmd, func(ctx context.Context, c wardv1.FederationClient) error {
				cur, err := c.ShowFederation(ctx, &wardv1.ShowFederationRequest{TrustDomain: args[0]})
				if err != nil {
					return err
				}
				if !cur.Network {
					return fmt.Errorf("the relationship with %s does not share the network (network: false): network_endpoint_cidrs bound its tunnels only; remove it and add it again with --network", args[0])
				}
				req := &wardv1.AddFederationRequest{TrustDomain: cur.TrustDomain, EndpointUrl: cur.EndpointUrl, Profile: cur.Profile,
					EndpointSpiffeId: cur.EndpointSpiffeId, Network: cur.Network, AllowedGateways: cur.AllowedGateways, NetworkEndpointCidrs: networkEndpoints}
				r, err := c.AddFederation(ctx, req)
				if err != nil {
					return err
				}
				before := strings.Join(cur.NetworkEndpointCidrs, ",")
				if before == "" {
					before = "(default)"
				}
				after := strings.Join(r.NetworkEndpointCidrs, ",")
				if after == "" {
					after = "(default)"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "network_endpoint_cidrs of %s: %s → %s; its tunnels are checked again.\n\n", r.TrustDomain, before, after)
				printFederation(cmd.OutOrStdout(), r)
				return nil
			})
		},
	}
	update.Flags().StringSliceVar(&networkEndpoints, "network-endpoint-cidr", nil, "where the trust domain's WireGuard endpoints may be from now on (CIDR prefix; repeat or comma-separate)")
	update.Flags().BoolVar(&clearEndpoints, "clear-network-endpoint-cidrs", false, "drop the bound: anywhere but this cluster's network.overlay_cidrs and network.endpoint_cidrs (docs/network.md)")

	remove := &cobra.Command{
		Use: "remove TRUST-DOMAIN", Short: "Stop trusting a foreign trust domain (its bundle leaves agents at their next sync)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withFederation(cmd, func(ctx context.Context, c wardv1.FederationClient) error {
				if _, err := c.RemoveFederation(ctx, &wardv1.RemoveFederationRequest{TrustDomain: args[0]}); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "No longer federated with %s.\n", args[0])
				return nil
			})
		},
	}
	cmd.AddCommand(add, list, show, refresh, update, remove)
	return cmd
}
