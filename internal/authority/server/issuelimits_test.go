package server

import (
	"testing"

	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/authority/registry"
)

// TestIssueLimitsFromConfig: the identity section's per-agent bounds reach
// the registry field by field, and unset they are the registry's defaults.
func TestIssueLimitsFromConfig(t *testing.T) {
	if got, want := issueLimits(config.Identity{}), (registry.IssueLimits{}).Effective(); got != want {
		t.Fatalf("defaults: %+v, want %+v", got, want)
	}
	n := func(v int) *int { return &v }
	got := issueLimits(config.Identity{MaxSVIDsPerEntry: n(5), MaxDisplacedPerEntry: n(7), MaxDisplacementsPerAgentHour: n(11), MaxJWTSVIDsPerEntry: n(13), MaxJWTSVIDsPerAgent: n(17)})
	if want := (registry.IssueLimits{SVIDsPerEntry: 5, DisplacedPerEntry: 7, DisplacementsPerAgent: 11, JWTsPerEntry: 13, JWTsPerAgent: 17}); got != want {
		t.Fatalf("set: %+v, want %+v", got, want)
	}
}
