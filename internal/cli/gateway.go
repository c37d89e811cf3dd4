package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/wardproject/ward/internal/dataplane/gateway"
)

func init() {
	register(func(root *cobra.Command) { root.AddCommand(gatewayCommand()) }, "gateway")
}

func gatewayCommand() *cobra.Command {
	var cfgPath, logLevel string
	var check bool
	cmd := &cobra.Command{
		Use:   "gateway --config gateway.yaml",
		Short: "Run the east-west gateway: route TLS by SNI to local inbound proxies without terminating it (it holds no key)",
		Long: `Run the ward east-west gateway. See docs/gateway.md.

It reads only each connection's TLS ClientHello, routes by its server name
(<service>.<trust domain>.ward) to the inbound proxy of an exported service
and splices the bytes both ways: mutual TLS runs end to end, the gateway
holds no key and cannot read or impersonate anything.

SIGTERM or SIGINT drains open connections (up to drain_timeout) and exits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfgPath == "" {
				return fmt.Errorf("give --config gateway.yaml (see docs/gateway.md and examples/gateway.yaml)")
			}
			cfg, err := gateway.LoadConfig(cfgPath)
			if err != nil {
				return err
			}
			if check && cfg.CatalogSocket != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: valid (routes: the exported services of %s in the services catalog from %s, proxy_protocol %s)\n",
					cfgPath, cfg.TrustDomain, cfg.CatalogSocket, cfg.CatalogProxyProtocol)
				return nil
			}
			if check {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: valid (%d routes)\n", cfgPath, len(cfg.Routes))
				for _, r := range cfg.Routes {
					fmt.Fprintf(cmd.OutOrStdout(), "  %s -> %s (proxy_protocol %s)\n", r.SNI(), r.Forward, r.ProxyProtocol)
				}
				return nil
			}
			g, err := gateway.New(cfg, gateway.WithLogger(newLogger(cmd.ErrOrStderr(), logLevel)))
			if err != nil {
				return err
			}
			return g.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "path to the gateway configuration (YAML)")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "operational log level: debug, info, warn or error")
	cmd.Flags().BoolVar(&check, "check", false, "validate the configuration, print the routes' SNI names and exit")
	return cmd
}
