package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardproject/ward/internal/dataplane/proxy"
	"github.com/wardproject/ward/internal/node/agent"
)

// The mesh demo writes only into a new or empty directory or one it wrote
// before (which it clears, keeping what `ward dev up` put there first);
// nothing of the user's is ever deleted.
func TestPrepareMeshDir(t *testing.T) {
	root := t.TempDir()

	foreign := filepath.Join(root, "mine")
	os.MkdirAll(foreign, 0o755)
	os.WriteFile(filepath.Join(foreign, "notes.txt"), []byte("keep me"), 0o600)
	err := prepareMeshDir(foreign)
	if err == nil || !strings.Contains(err.Error(), "not written by ward") {
		t.Fatalf("a directory with the user's files: %v, want a refusal", err)
	}
	if b, _ := os.ReadFile(filepath.Join(foreign, "notes.txt")); string(b) != "keep me" {
		t.Fatal("the user's file was touched")
	}

	dir := filepath.Join(root, "mesh")
	if err := prepareMeshDir(dir); err != nil {
		t.Fatalf("a new directory: %v", err)
	}
	os.MkdirAll(filepath.Join(dir, "authority"), 0o700)
	os.WriteFile(filepath.Join(dir, "agent.yaml"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "ward.log"), []byte("log"), 0o600)
	if err := prepareMeshDir(dir); err != nil {
		t.Fatalf("an earlier mesh demo: %v", err)
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if got := strings.Join(names, " "); got != ".ward-mesh ward.log" {
		t.Fatalf("after clearing an earlier demo the directory holds %q, want .ward-mesh ward.log", got)
	}
}

// Every file the demo writes renders, and the configs parse with the
// loaders `ward agent` and `ward proxy` use (the e2e quickstart runs them).
func TestMeshTemplatesRender(t *testing.T) {
	m := &mesh{Dir: "/tmp/m", Shown: "m", TrustDomain: "dev.ward.internal", UID: 1000, NodeAPI: "127.0.0.1:1",
		AdminSocket: "unix:///tmp/m/authority/admin.sock", AgentID: "spiffe://dev.ward.internal/ward/agent/mesh-node",
		WebID: "spiffe://dev.ward.internal/demo/web", APIID: "spiffe://dev.ward.internal/demo/api",
		InboundAddr: "127.0.0.1:2", AppAddr: "127.0.0.1:3", Policy: 1}
	for name, tmpl := range meshFiles {
		b, err := m.render(tmpl)
		if err != nil || strings.Contains(string(b), "<no value>") {
			t.Fatalf("%s: %v\n%s", name, err, b)
		}
		switch {
		case name == "agent.yaml":
			_, err = agent.ParseConfig(b)
		case strings.HasPrefix(name, "proxy-"):
			_, err = proxy.ParseConfig(b)
		}
		if err != nil {
			t.Errorf("%s: %v\n%s", name, err, b)
		}
	}
	b, err := m.render(meshReadme)
	if err != nil || !strings.Contains(string(b), "curl -s --unix-socket m/web.sock http://api/hello") {
		t.Fatalf("README.txt: %v\n%s", err, b)
	}
}

// The mesh directory is the user's own: one another user can write into
// (e.g. made in /tmp by someone else, or left world-writable) is refused
// before anything is written, so their symlinks named .ward-mesh,
// ward.log or ward.pid cannot make ward overwrite a file of the user's.
// Before this check a planted `.ward-mesh -> ~/.bashrc` passed as an
// earlier demo and the marker text replaced the victim file. What ward
// creates or accepts is left 0700: it holds the join token, the logs and
// web.sock (which calls the api as the web workload).
func TestPrepareMeshDirRefusesOthersDirectories(t *testing.T) {
	root := t.TempDir()
	victim := filepath.Join(root, "victim.txt")
	if err := os.WriteFile(victim, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	shared := filepath.Join(root, "shared")
	if err := os.Mkdir(shared, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shared, 0o1777); err != nil { // like /tmp, whatever the umask
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(shared, meshMarker)); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(shared, "ward.log")); err != nil {
		t.Fatal(err)
	}
	err := prepareMeshDir(shared)
	if err == nil || !strings.Contains(err.Error(), "writable by other users") {
		t.Fatalf("a world-writable directory: %v, want a refusal", err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious" {
		t.Fatalf("the file a planted symlink pointed at was overwritten: %q", b)
	}

	// A marker that is a symlink is no marker, even in the user's own directory.
	own := filepath.Join(root, "own")
	os.Mkdir(own, 0o755)
	os.Symlink(victim, filepath.Join(own, meshMarker))
	if err := prepareMeshDir(own); err == nil || !strings.Contains(err.Error(), "not written by ward") {
		t.Fatalf("a symlinked marker: %v, want a refusal", err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious" {
		t.Fatalf("the symlinked marker's target was overwritten: %q", b)
	}

	if os.Getuid() == 0 {
		other := filepath.Join(root, "other")
		os.Mkdir(other, 0o755)
		if err := os.Chown(other, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if err := prepareMeshDir(other); err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
			t.Fatalf("another user's directory: %v, want a refusal", err)
		}
	}

	mine := filepath.Join(root, "mine")
	os.Mkdir(mine, 0o755)
	if err := prepareMeshDir(mine); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{mine, filepath.Join(root, "new")} {
		if d != mine {
			if err := prepareMeshDir(d); err != nil {
				t.Fatal(err)
			}
		}
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
			t.Fatalf("%s: mode %v %v, want 0700", d, fi.Mode().Perm(), err)
		}
	}
}

// The demo app trusts X-Ward-Peer-Id, so only the api's proxy may reach
// it: it listens on a unix socket in the (0700) mesh directory. On a
// loopback port, as before, any local user could send
// `X-Ward-Peer-Id: spiffe://.../demo/web` straight to it, bypassing the
// proxy, its mTLS and its policy.
func TestMeshAppOnlyBehindTheProxy(t *testing.T) {
	m := &mesh{Dir: t.TempDir(), Shown: "m", TrustDomain: "dev.ward.internal", UID: 1000, NodeAPI: "127.0.0.1:1",
		AdminSocket: "unix:///tmp/m/authority/admin.sock", AgentID: "spiffe://dev.ward.internal/ward/agent/mesh-node",
		WebID: "spiffe://dev.ward.internal/demo/web", APIID: "spiffe://dev.ward.internal/demo/api",
		InboundAddr: "127.0.0.1:2", Policy: 1}
	m.AppAddr = m.appAddr()
	b, err := m.render(meshFiles["proxy-api.yaml"])
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := proxy.ParseConfig(b)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	fwd := cfg.Inbound[0].Forward
	if want := "unix://" + filepath.Join(m.Dir, "app.sock"); fwd != want {
		t.Fatalf("the api's proxy forwards to %q, want the app on %q (a socket in the mesh directory)", fwd, want)
	}
}
