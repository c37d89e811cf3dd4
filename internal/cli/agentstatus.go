package cli

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/wardproject/ward/internal/node/agent"
)

// agentStatusCommand is `ward agent status`: the running agent's /status
// (health_address), with the WireGuard tunnel table (docs/network.md).
func agentStatusCommand() *cobra.Command {
	var cfgPath, addr string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show a running agent's status and its WireGuard tunnel table (from its health_address)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if addr == "" {
				if cfgPath == "" {
					return fmt.Errorf("give --config agent.yaml (its health_address) or --address host:port")
				}
				cfg, err := agent.LoadConfig(cfgPath)
				if err != nil {
					return err
				}
				if cfg.HealthAddress == "" {
					return fmt.Errorf("%s has no health_address: the agent serves /status only there", cfgPath)
				}
				addr = cfg.HealthAddress
			}
			c := http.Client{Timeout: 5 * time.Second}
			resp, err := c.Get("http://" + addr + "/status")
			if err != nil {
				return fmt.Errorf("reading the agent's status at %s: %w (is the agent running?)", addr, err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
			if err != nil {
				return err
			}
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("the agent at %s answered %s", addr, resp.Status)
			}
			if asJSON {
				_, err := cmd.OutOrStdout().Write(body)
				return err
			}
			var st agent.Status
			if err := json.Unmarshal(body, &st); err != nil {
				return fmt.Errorf("the agent's status does not decode: %w", err)
			}
			printAgentStatus(cmd.OutOrStdout(), st, time.Now())
			return nil
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "the agent's configuration (for its health_address)")
	cmd.Flags().StringVar(&addr, "address", "", "the agent's health_address (host:port), instead of --config")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print /status as JSON")
	return cmd
}

func printAgentStatus(out io.Writer, st agent.Status, now time.Time) {
	fmt.Fprintf(out, "agent:      %s (trust domain %s)\n", orDash(st.AgentID), st.TrustDomain)
	if st.Evicted {
		fmt.Fprintln(out, "state:      EVICTED: attest again")
	}
	if st.SecondsSinceLastSync >= 0 {
		fmt.Fprintf(out, "last sync:  %.0fs ago\n", st.SecondsSinceLastSync)
	} else {
		fmt.Fprintln(out, "last sync:  never")
	}
	if st.LastError != "" {
		fmt.Fprintf(out, "last error: %s\n", st.LastError)
	}
	fmt.Fprintf(out, "entries:    %d, X509-SVIDs: %d\n", st.Entries, st.SVIDs)
	n := st.Network
	if n == nil {
		fmt.Fprintln(out, "network:    off (no network section)")
		return
	}
	mode := "strict"
	if !n.Strict {
		mode = "not strict"
	}
	fmt.Fprintf(out, "network:    %s %s (%s), key %s, registered %v, %d rotations, %d handshakes\n",
		n.Interface, n.Address, mode, shortKey(n.PublicKey), n.Registered, n.Rotations, n.Handshakes)
	if !n.NextRotation.IsZero() {
		fmt.Fprintf(out, "            next key rotation %s\n", n.NextRotation.Round(time.Second).Format(time.RFC3339))
	}
	if n.LastError != "" {
		fmt.Fprintf(out, "            error: %s\n", n.LastError)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tKEY\tENDPOINT\tALLOWED IPS\tLAST HANDSHAKE\tRECEIVED\tSENT")
	for _, p := range n.Peers {
		hs := "never"
		if p.HandshakeAgeSeconds >= 0 {
			hs = fmt.Sprintf("%.0fs ago", p.HandshakeAgeSeconds)
		}
		allowed := strings.Join(p.AllowedIPs, ",")
		if allowed == "" {
			allowed = "(next key)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", orDash(p.ID), shortKey(p.PublicKey), orDash(p.Endpoint), allowed, hs, p.RxBytes, p.TxBytes)
	}
	tw.Flush()
}

func shortKey(k []byte) string {
	if len(k) == 0 {
		return "-"
	}
	s := base64.StdEncoding.EncodeToString(k)
	if len(s) > 12 {
		s = s[:12] + "…"
	}
	return s
}
