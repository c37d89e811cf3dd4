package cli

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/integrations/k8s/kmsplugin"
)

func init() {
	register(func(root *cobra.Command) { root.AddCommand(kmsPluginCommand()) }, "kms-plugin")
}

func kmsPluginCommand() *cobra.Command {
	var cfgPath, logLevel string
	var check bool
	cmd := &cobra.Command{
		Use:   "kms-plugin --config kms-plugin.yaml",
		Short: "Run the Kubernetes KMS v2 plugin: kube-apiserver's DEK seeds wrapped by a ward key",
		Long: `Run ward's Kubernetes KMS v2 plugin beside kube-apiserver. See docs/kubernetes.md.

It serves the KMS v2 gRPC API on a unix socket (mode 0600) named in the
apiserver's EncryptionConfiguration, and wraps the DEK seeds the apiserver
makes with a ward key through the authority, bound to the encryption context
k8s-kms-plugin=<cluster>. It reaches the authority over its admin socket on
the same node (authority.address), or, with authority.node_api, as a
workload: its X509-SVID from the node's ward agent (workload_api_socket),
mutual TLS to the Node API, which must present authority.server_id. Every
call is authorized and audited by the authority like any other KMS call
(in the mTLS mode by policy on the plugin's SPIFFE ID).

Status answers "ok" only after a real encrypt/decrypt round trip through the
authority (reused for health_ttl, 10s by default), and otherwise says why
(authority sealed, unreachable, key disabled). Its key_id is
ward:<key>:<version>, so ` + "`ward key rotate`" + ` changes it and the apiserver
makes a new DEK seed under the new version.

--check validates the configuration, makes one round trip and exits non-zero
unless it succeeded.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfgPath == "" {
				return fmt.Errorf("give --config kms-plugin.yaml (see docs/kubernetes.md)")
			}
			cfg, err := kmsplugin.LoadConfig(cfgPath)
			if err != nil {
				return err
			}
			auth, closeAuth, err := kmsPluginAuthority(cmd, cfg, check)
			if err != nil {
				return err
			}
			defer closeAuth()
			p := kmsplugin.New(cfg, auth)
			out := cmd.OutOrStdout()
			if check {
				healthz, v := p.Health(cmd.Context())
				if healthz != "ok" {
					return &exitError{code: 1, err: fmt.Errorf("%s: valid, but the round trip through the authority failed: %s", cfgPath, healthz)}
				}
				fmt.Fprintf(out, "%s: valid; round trip through the authority ok; key_id %s\n", cfgPath, kmsplugin.KeyID(cfg.Key, v))
				return nil
			}
			log := newLogger(cmd.ErrOrStderr(), logLevel)
			ln, err := kmsplugin.Listen(cfg.Socket)
			if err != nil {
				return err
			}
			defer os.Remove(cfg.Socket)
			healthz, v := p.Health(cmd.Context())
			log.Info("kms-plugin serving", "socket", cfg.Socket, "key", cfg.Key, "cluster", cfg.Cluster,
				"mode", kmsPluginMode(cfg), "healthz", healthz, "key_id", keyIDOrNone(cfg.Key, v))
			fmt.Fprintf(out, "kms-plugin: serving KMS v2 on unix://%s (key %s, cluster %s)\n", cfg.Socket, cfg.Key, cfg.Cluster)
			return p.Serve(cmd.Context(), ln)
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "path to the plugin configuration (YAML, docs/kubernetes.md)")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "operational log level: debug, info, warn or error")
	cmd.Flags().BoolVar(&check, "check", false, "validate the configuration, make one round trip through the authority and exit")
	return cmd
}

func keyIDOrNone(key string, v uint32) string {
	if v == 0 {
		return "(none yet)"
	}
	return kmsplugin.KeyID(key, v)
}

func kmsPluginMode(cfg *kmsplugin.Config) string {
	if cfg.Authority.MTLS() {
		return "mtls node_api " + cfg.Authority.NodeAPI + " as a workload (server " + cfg.Authority.ServerID + ")"
	}
	return "admin socket"
}

// kmsPluginAuthority is the authority in the configuration's mode: the
// admin socket, or the workload KMS on the Node API with the plugin's
// X509-SVID from the Workload API. For --check (once) it waits a bounded
// while for the first SVID; serving, it starts at once and Status says
// why it is unhealthy until the SVID comes.
func kmsPluginAuthority(cmd *cobra.Command, cfg *kmsplugin.Config, once bool) (kmsplugin.Authority, func(), error) {
	if !cfg.Authority.MTLS() {
		c, err := dialKMSPluginAuthority(cmd, cfg)
		if err != nil {
			return nil, nil, err
		}
		return kmsplugin.ClientAuthority(c), func() { c.Close() }, nil
	}
	src := kmsplugin.WatchWorkloadAPI(cfg.Authority.WorkloadAPISocket)
	auth, err := kmsplugin.NodeAPIAuthorityFor(cfg, src)
	if err != nil {
		src.Close()
		return nil, nil, err
	}
	if once {
		deadline := time.Now().Add(10 * time.Second)
		for _, err := auth.SVID(); err != nil && time.Now().Before(deadline) && cmd.Context().Err() == nil; _, err = auth.SVID() {
			time.Sleep(50 * time.Millisecond)
		}
	}
	return auth, func() { auth.Close(); src.Close() }, nil
}

// dialKMSPluginAuthority dials the admin socket named by the configuration
// (else --address / $WARD_ADDRESS), checking its server like every CLI
// command does (adminPeer).
func dialKMSPluginAuthority(cmd *cobra.Command, cfg *kmsplugin.Config) (*client.Client, error) {
	return dialIntegrationAuthority(cmd, cfg.Authority.Address, cfg.Authority.ServerUID, "kms-plugin", client.WithAttemptTimeout(cfg.AttemptTimeout()))
}

// dialIntegrationAuthority dials the admin socket address (else --address /
// $WARD_ADDRESS) for an integration (who), trusting serverUID too if set.
func dialIntegrationAuthority(cmd *cobra.Command, address string, serverUID *int, who string, opts ...client.Option) (*client.Client, error) {
	flag, _ := cmd.Flags().GetString("address")
	if address != "" {
		flag = address
	}
	addr, err := client.ResolveAddress(flag)
	if err != nil {
		return nil, err
	}
	paths := unixPaths(addr)
	if len(paths) == 0 || len(paths) != len(strings.Split(addr, ",")) {
		return nil, fmt.Errorf("authority address %q: the %s reaches the authority over its admin socket (unix:///path/to/admin.sock; several authorities separated by commas)", addr, who)
	}
	extra := -1
	if serverUID != nil {
		extra = *serverUID
	} else if f := cmd.Flags().Lookup("server-uid"); f != nil {
		extra, _ = cmd.Flags().GetInt("server-uid")
	}
	chk := &adminPeer{path: paths[0], paths: paths, self: uint32(os.Geteuid()), extraUID: extra}
	return client.Dial(addr, append([]client.Option{client.WithUnixPeerCheck(chk.check)}, opts...)...)
}
