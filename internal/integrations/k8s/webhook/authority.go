package webhook

import (
	"context"
	"fmt"
	"strings"
	"time"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
)

// The webhook calls the authority once, at start, to read the KMS
// classification table (authority.address). Admission reviews never wait
// on the authority: each is judged from the rules in memory, so the
// apiserver's timeoutSeconds (5 in deploy/webhook.yaml; 10 by default, 30
// at most) is spent on that alone.

// TableTimeout bounds reading the classification table at start, retries
// on other authorities included.
const TableTimeout = 10 * time.Second

// AttemptTimeout bounds one attempt of that read when authority.address
// names several authorities: TableTimeout shared among them (half of it
// for two), so an authority that takes the call and never answers (hung,
// or cut off from its store) leaves the time for the next one. The
// client's own default (10 s) is the whole budget: one silent authority
// failed the start with the next one up.
func (a AuthorityConfig) AttemptTimeout() time.Duration {
	return attemptTimeout(TableTimeout, a.Address)
}

func attemptTimeout(budget time.Duration, address string) time.Duration {
	n := 0
	for _, s := range strings.Split(address, ",") {
		if strings.TrimSpace(s) != "" {
			n++
		}
	}
	return budget / time.Duration(max(n, 2))
}

// CheckAuthorityTable reads the classification table through c (dialed
// with WithAttemptTimeout(AttemptTimeout()) for several authorities) within
// TableTimeout and checks the file against it (CheckTable).
func (c *Config) CheckAuthorityTable(ctx context.Context, cl *client.Client) error {
	return c.checkAuthorityTable(ctx, cl, TableTimeout)
}

func (c *Config) checkAuthorityTable(ctx context.Context, cl *client.Client, budget time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	resp, err := cl.Keys.ListClassifications(ctx, &wardv1.ListClassificationsRequest{})
	if err != nil {
		return fmt.Errorf("reading the classification table from the authority (within %s): %w", budget, err)
	}
	names := make([]string, 0, len(resp.Classifications))
	for _, cl := range resp.Classifications {
		names = append(names, cl.Name)
	}
	return c.CheckTable(names)
}
