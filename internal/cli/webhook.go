package cli

import (
	"fmt"
	"net"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	gsw "github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/integrations/k8s/webhook"
	"github.com/wardproject/ward/internal/shared/reconnect"
)

func init() {
	register(func(root *cobra.Command) { root.AddCommand(webhookCommand()) }, "webhook")
}

func webhookCommand() *cobra.Command {
	var cfgPath, logLevel string
	var check bool
	cmd := &cobra.Command{
		Use:   "webhook --config webhook.yaml",
		Short: "Run the Kubernetes validating admission webhook that enforces encryption declarations",
		Long: `Run ward's validating admission webhook for Kubernetes. See docs/kubernetes.md.

Rules come from a small declarative file: namespaces carry a data-classification
label; in a classified namespace pods run with a service account that maps to a
ward identity and do not opt out of the proxy, and PersistentVolumeClaims use a
StorageClass the file declares encrypted. Which of these a classification
requires is listed per row of the KMS classification table; with
authority.address the webhook reads that table from the authority at start
and refuses a file that does not cover it.

It serves HTTPS with its X509-SVID from the ward agent's Workload API (issued
by ward's CA; the entry must carry the Service's DNS name: --dns). Paths:
/validate for Namespaces, /validate/<classification> for Pods and PVCs (the
ValidatingWebhookConfiguration selects namespaces by their label), /healthz.
mode: enforce denies, naming each broken rule and how to comply; mode: warn
admits with those messages as admission warnings.

--check validates the file (and the table, with authority.address) and exits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfgPath == "" {
				return fmt.Errorf("give --config webhook.yaml (see docs/kubernetes.md)")
			}
			cfg, err := webhook.LoadConfig(cfgPath)
			if err != nil {
				return err
			}
			if cfg.Authority.Address != "" {
				if err := checkWebhookTable(cmd, cfg); err != nil {
					return fmt.Errorf("%s: %w", cfgPath, err)
				}
			}
			out := cmd.OutOrStdout()
			if check {
				fmt.Fprintf(out, "%s: valid (%d classifications, %d identities, mode %s)\n", cfgPath, len(cfg.Classifications), len(cfg.Identities), cfg.Mode)
				return nil
			}
			log := newLogger(cmd.ErrOrStderr(), logLevel)
			ctx := cmd.Context()
			log.Info("webhook waiting for its SVID", "workload_api_socket", cfg.WorkloadAPISocket, "dns_name", cfg.DNSName)
			pick := func(svids []*x509svid.SVID) *x509svid.SVID {
				for _, s := range svids {
					if s.Certificates[0].VerifyHostname(cfg.DNSName) == nil {
						return s
					}
				}
				return svids[0]
			}
			src, err := gsw.NewX509Source(ctx, gsw.WithClientOptions(append(reconnect.WorkloadAPI(), gsw.WithAddr("unix://"+cfg.WorkloadAPISocket))...), gsw.WithDefaultX509SVIDPicker(pick))
			if err != nil {
				return fmt.Errorf("workload API unix://%s: %w (is the ward agent running, and does an entry match the webhook?)", cfg.WorkloadAPISocket, err)
			}
			defer src.Close()
			if err := webhook.CheckSVID(src, cfg.DNSName); err != nil {
				return err
			}
			ln, err := net.Listen("tcp", cfg.Listen)
			if err != nil {
				return err
			}
			log.Info("webhook serving", "address", ln.Addr().String(), "mode", cfg.Mode, "dns_name", cfg.DNSName)
			fmt.Fprintf(out, "webhook: serving admission reviews on https://%s (mode %s)\n", ln.Addr(), cfg.Mode)
			return webhook.Serve(ctx, ln, webhook.NewHandler(cfg, log), webhook.TLSConfig(src))
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "path to the webhook's rules and settings (YAML, docs/kubernetes.md)")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "operational log level: debug, info, warn or error")
	cmd.Flags().BoolVar(&check, "check", false, "validate the configuration (and the classification table) and exit")
	return cmd
}

// checkWebhookTable reads the KMS classification table from the authority
// and checks the file covers exactly it (webhook.Config.CheckAuthorityTable:
// each attempt bounded so a silent authority leaves time for the next).
func checkWebhookTable(cmd *cobra.Command, cfg *webhook.Config) error {
	c, err := dialIntegrationAuthority(cmd, cfg.Authority.Address, cfg.Authority.ServerUID, "webhook", client.WithAttemptTimeout(cfg.Authority.AttemptTimeout()))
	if err != nil {
		return err
	}
	defer c.Close()
	return cfg.CheckAuthorityTable(cmd.Context(), c)
}
