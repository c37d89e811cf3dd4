package otheruid

import (
	"os"
	"strconv"
	"testing"
)

const envChild = "WARD_TEST_OTHERUID_CHILD"

func init() {
	Child(envChild, func(v string) string { return v + " " + strconv.Itoa(os.Getuid()) + " " + strconv.Itoa(os.Getgid()) })
}

// TestRunAsNobody: the copied test binary, run by Run, is the child, as
// uid and gid 65534, and a file only root may read stays closed to it.
func TestRunAsNobody(t *testing.T) {
	Require(t)
	dir := PublicDir(t, "ward-otheruid-")
	bin := CopyTestBinary(t, dir, "otheruid.test")
	if got, want := Run(t, bin, Nobody, envChild+"=hello"), "hello 65534 65534"; got != want {
		t.Fatalf("child: %q, want %q", got, want)
	}
	secret := dir + "/secret"
	if err := os.WriteFile(secret, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := Command(Nobody, "cat", secret).CombinedOutput(); err == nil {
		t.Fatalf("uid %d read a 0600 root file: %q %v", Nobody, out, err)
	}
}
