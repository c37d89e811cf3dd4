package cli

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/wardproject/ward/envelope"
)

// remoteKMS is a placeholder until internal/cli/remote.go provides the
// authority-backed envelope.KMS; the lead deletes this file then.
func remoteKMS(cmd *cobra.Command) (envelope.KMS, func(), error) {
	return nil, nil, errors.New("no authority client yet: use --local-key")
}
