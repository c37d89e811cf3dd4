package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/wardproject/ward/client"
)

// dial connects to the authority named by --address or $WARD_ADDRESS.
func dial(cmd *cobra.Command) (*client.Client, error) {
	flag, _ := cmd.Flags().GetString("address")
	addr, err := client.ResolveAddress(flag)
	if err != nil {
		return nil, err
	}
	return client.Dial(addr)
}

// withClient runs f with a connected client and a bounded context,
// translating API errors into their messages.
func withClient(cmd *cobra.Command, f func(ctx context.Context, c *client.Client) error) error {
	c, err := dial(cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
	defer cancel()
	if err := f(ctx, c); err != nil {
		return client.Unwrap(err)
	}
	return nil
}

// parseKV parses repeated k=v flags into a map; duplicates are errors.
func parseKV(flagName string, pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(pairs))
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--%s %q: use key=value", flagName, p)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("--%s: key %q given twice", flagName, k)
		}
		out[k] = v
	}
	return out, nil
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// readSecretLine reads one line from in: without echo on a terminal.
func readSecretLine(cmd *cobra.Command, prompt string) (string, error) {
	in := cmd.InOrStdin()
	if f, ok := in.(*os.File); ok && isTerminal(f) {
		fmt.Fprint(cmd.ErrOrStderr(), prompt)
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(cmd.ErrOrStderr())
		return strings.TrimSpace(string(b)), err
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

// confirm asks yes/no on a terminal; without a terminal it refuses and
// tells the user about --yes.
func confirm(cmd *cobra.Command, question string) error {
	in := cmd.InOrStdin()
	f, ok := in.(*os.File)
	if !ok || !isTerminal(f) {
		return fmt.Errorf("refusing without confirmation: no terminal to ask on; pass --yes to confirm")
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "%s Type 'yes' to continue: ", question)
	line, _ := bufio.NewReader(f).ReadString('\n')
	if strings.TrimSpace(line) != "yes" {
		return fmt.Errorf("aborted: nothing was changed")
	}
	return nil
}

// readInput reads all of stdin, bounded to limit bytes.
func readInput(cmd *cobra.Command, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading stdin: %w", err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("input is larger than %d bytes: the KMS is for small payloads and data keys; use `ward encrypt` for files", limit)
	}
	return b, nil
}
