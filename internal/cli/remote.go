package cli

import (
	"github.com/spf13/cobra"

	"github.com/wardproject/ward/envelope"
)

// remoteKMS returns the authority (named by --address or $WARD_ADDRESS) as
// the envelope.KMS that wraps and unwraps data keys for file encryption.
func remoteKMS(cmd *cobra.Command) (envelope.KMS, func(), error) {
	c, err := dial(cmd)
	if err != nil {
		return nil, nil, err
	}
	return c, func() { c.Close() }, nil
}
