package cli

import (
	"encoding/json"
	"runtime"
	"strings"
	"testing"

	"github.com/wardproject/ward/internal/shared/buildinfo"
)

func TestVersionCommand(t *testing.T) {
	out, _ := mustRun(t, nil, "version")
	if !strings.HasPrefix(out, "ward "+buildinfo.Read().Version+"\n") || !strings.Contains(out, runtime.Version()) {
		t.Errorf("ward version printed:\n%s", out)
	}
	out, _ = mustRun(t, nil, "version", "--json")
	var in buildinfo.Info
	if err := json.Unmarshal([]byte(out), &in); err != nil {
		t.Fatalf("ward version --json: %v\n%s", err, out)
	}
	if in != buildinfo.Read() {
		t.Errorf("ward version --json = %+v, want %+v", in, buildinfo.Read())
	}
	if _, _, err := runWard(t, nil, "version", "extra"); err == nil {
		t.Error("ward version extra: no error")
	}
}
