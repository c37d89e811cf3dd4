// Package cli builds ward's command tree (cobra): server, operator, key,
// kms, audit, file encryption and the rest. Each area registers its
// commands from its own file through register, so areas stay independent.
package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// registrations add top-level commands; each area file appends in init.
var registrations []func(root *cobra.Command)

func register(f func(root *cobra.Command)) { registrations = append(registrations, f) }

// NewRoot builds the full command tree.
func NewRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "ward",
		Short:         "ward: workload identity, mTLS and key management for a fleet of clusters",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().String("address", "", "authority address: unix:///path/to/admin.sock or host:port, or several authorities separated by commas (calls fail over between them, docs/ha.md) (default $WARD_ADDRESS)")
	for _, f := range registrations {
		f(root)
	}
	return root
}

// exitError carries a specific exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// Main runs ward with args and returns the process exit code.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := NewRoot()
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return 1
	}
	return 0
}
