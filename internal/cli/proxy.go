package cli

import (
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/wardproject/ward/internal/dataplane/proxy"
)

func init() {
	register(func(root *cobra.Command) { root.AddCommand(proxyCommand()) }, "proxy")
}

func proxyCommand() *cobra.Command {
	var cfgPath, logLevel, cpuProfile string
	var check bool
	cmd := &cobra.Command{
		Use:   "proxy --config proxy.yaml",
		Short: "Run the mTLS proxy: inbound listeners authorize callers by policy, outbound listeners wrap the app's traffic in mTLS",
		Long: `Run the ward proxy (sidecar or gateway). See docs/proxy.md.

SIGHUP re-reads the policy files; SIGTERM or SIGINT drains open connections
(up to drain_timeout) and exits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfgPath == "" {
				return fmt.Errorf("give --config proxy.yaml (see docs/proxy.md for an example)")
			}
			cfg, err := proxy.LoadConfig(cfgPath)
			if err != nil {
				return err
			}
			if check {
				if err := cfg.CheckPolicyFiles(); err != nil {
					return fmt.Errorf("proxy config %s: %w", cfgPath, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: valid (%d inbound, %d outbound listeners)\n", cfgPath, len(cfg.Inbound), len(cfg.Outbound))
				return nil
			}
			p, err := proxy.New(cfg, proxy.WithLogger(newLogger(cmd.ErrOrStderr(), logLevel)))
			if err != nil {
				return err
			}
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			go func() {
				for range hup {
					p.Reload()
				}
			}()
			return p.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "path to the proxy configuration (YAML)")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "operational log level: debug, info, warn or error")
	cmd.Flags().BoolVar(&check, "check", false, "validate the configuration (and compile policy_files and deny_list_file) and exit")
	// For bench/proxy (-profile): the profile is written when the proxy stops (SIGTERM).
	cmd.Flags().StringVar(&cpuProfile, "cpu-profile", "", "write a CPU profile (runtime/pprof) of the run to this file")
	_ = cmd.Flags().MarkHidden("cpu-profile")
	return cmd
}
