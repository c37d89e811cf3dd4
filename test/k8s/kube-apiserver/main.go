// Command kube-apiserver is the upstream Kubernetes API server, built from
// its Go modules so ward's integration tests run against the real thing.
// It lives in its own module to keep Kubernetes out of ward's go.mod; the
// script scripts/kube-apiserver.sh builds and caches it by version.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
