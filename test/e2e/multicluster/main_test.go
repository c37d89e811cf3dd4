// Package multicluster runs several ward clusters end to end (the e2e
// harness): federation, cross-cluster policy and revocation, gateways,
// service failover, audit witnesses, WireGuard node networks and the chaos
// scenario, on loopback or in network namespaces (root).
package multicluster

import (
	"testing"

	"github.com/wardproject/ward/test/e2e"
)

func TestMain(m *testing.M) { e2e.Main(m) }
