package cli

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
)

func init() {
	register(func(root *cobra.Command) { root.AddCommand(serviceCommand()) }, "service")
}

func withCatalog(cmd *cobra.Command, f func(ctx context.Context, c wardv1.CatalogClient) error) error {
	return withClient(cmd, func(ctx context.Context, c *client.Client) error { return f(ctx, c.Catalog) })
}

func serviceCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "service", Short: "Exported services: export, unexport, list (the catalog federated clusters reach through gateways)"}
	var asJSON bool

	var port int
	var forward, spiffeID, gateway string
	export := &cobra.Command{
		Use:   "export NAME --port P --spiffe-id ID [--gateway HOST:PORT]",
		Short: "Publish a service in this trust domain's catalog: federated clusters reach it through the gateway",
		Example: "  ward service export payments --port 8443 --spiffe-id spiffe://b.example/ns/pay/payments --gateway gw.b.example:15443\n" +
			"  (port: the service's inbound proxy listener, on services.forward_host of the server config, default 127.0.0.1)",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withCatalog(cmd, func(ctx context.Context, c wardv1.CatalogClient) error {
				r, err := c.ExportService(ctx, &wardv1.ExportServiceRequest{Name: args[0], Port: int32(port), Forward: forward, SpiffeId: spiffeID, Gateway: gateway})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(cmd.OutOrStdout(), r)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Exported %s@%s (catalog sequence %d): SNI %s.%s.ward at gateway %s -> %s, server ID %s\n",
					r.Name, r.TrustDomain, r.Sequence, r.Name, r.TrustDomain, r.Gateway, r.Forward, r.SpiffeId)
				return nil
			})
		},
	}
	export.Flags().IntVar(&port, "port", 0, "port of the service's inbound proxy listener (on services.forward_host, default 127.0.0.1)")
	export.Flags().StringVar(&forward, "forward", "", "the inbound proxy listener instead of --port (host:port or unix:///path)")
	export.Flags().StringVar(&spiffeID, "spiffe-id", "", "SPIFFE ID the service's inbound proxy presents (required; callers require it)")
	export.Flags().StringVar(&gateway, "gateway", "", "host:port where other clusters reach this cluster's gateway (default services.gateway of the server config)")
	_ = export.MarkFlagRequired("spiffe-id")

	unexport := &cobra.Command{
		Use: "unexport NAME", Short: "Remove a service from this trust domain's catalog (its gateway routes stop at the next policy version)",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withCatalog(cmd, func(ctx context.Context, c wardv1.CatalogClient) error {
				if _, err := c.UnexportService(ctx, &wardv1.UnexportServiceRequest{Name: args[0]}); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Unexported %s.\n", args[0])
				return nil
			})
		},
	}

	list := &cobra.Command{
		Use: "list", Short: "List local and imported services with their clusters (trust domains), gateways and health", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withCatalog(cmd, func(ctx context.Context, c wardv1.CatalogClient) error {
				r, err := c.ListServices(ctx, &wardv1.ListServicesRequest{})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(cmd.OutOrStdout(), r)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "SERVICE\tCLUSTER\tKIND\tGATEWAY\tSPIFFE ID\tSEQUENCE\tHEALTH")
				for _, s := range r.Services {
					kind := "imported"
					if s.Local {
						kind = "local (" + s.Source + ")"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", s.Name, s.TrustDomain, kind, s.Gateway, s.SpiffeId, s.Sequence, s.Health)
				}
				return tw.Flush()
			})
		},
	}
	for _, c := range []*cobra.Command{export, list} {
		c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	}
	cmd.AddCommand(export, unexport, list)
	return cmd
}
