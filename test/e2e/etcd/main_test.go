// Package etcd runs ward authorities on a real etcd end to end (the e2e
// harness): several authorities under faults (HA) and the backup and
// restore drill. Most tests need root (network namespaces).
package etcd

import (
	"testing"

	"github.com/wardproject/ward/test/e2e"
)

func TestMain(m *testing.M) { e2e.Main(m) }
