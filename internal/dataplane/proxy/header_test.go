package proxy

import (
	"net/http"
	"testing"
)

// TestStripOwnedHeaders: every spelling of a header the http-header mode
// owns that a common server folds into the same name (case; '-', '_' and
// other punctuation) is removed; other headers stay.
func TestStripOwnedHeaders(t *testing.T) {
	for _, tc := range []struct {
		name  string
		strip bool
	}{
		{"X-Ward-Peer-Id", true},
		{"x-ward-peer-id", true},
		{"X-WARD-PEER-ID", true},
		{"X_Ward_Peer_Id", true}, // the red-team spelling: nginx/CGI/WSGI read it as X-Ward-Peer-Id
		{"x_ward_peer_id", true},
		{"X_WARD_PEER_ID", true},
		{"X-Ward_Peer-Id", true},
		{"X.Ward.Peer.Id", true}, // Apache's CGI environment maps every non-alphanumeric to '_'
		{"X~Ward~Peer~Id", true},
		{"X-Ward-Correlation-Id", true},
		{"x_ward_correlation_id", true},
		{"X_WARD_CORRELATION_ID", true},
		{"Forwarded", true},
		{"X_Forwarded_For", true},
		{"x-forwarded-host", true},
		{"X_FORWARDED_PROTO", true},
		// Not the same name under any folding.
		{"X-Ward-Peer-Idx", false},
		{"X-Ward-PeerId", false},
		{"XWardPeerId", false},
		{"X-Ward-Peer", false},
		{"X-Request-Id", false},
		{"Content-Type", false},
	} {
		h := http.Header{}
		h[tc.name] = []string{"spiffe://evil.example/spoofed"} // raw key, as the server parsed it
		h["Keep-Me"] = []string{"1"}
		stripOwnedHeaders(h)
		_, present := h[tc.name]
		if present == tc.strip {
			t.Errorf("%q: present after strip = %v, want stripped=%v", tc.name, present, tc.strip)
		}
		if h.Get("Keep-Me") != "1" {
			t.Errorf("%q: an unrelated header was removed", tc.name)
		}
	}
	stripOwnedHeaders(nil) // no trailers: no panic
}

func TestFoldHeaderName(t *testing.T) {
	for in, want := range map[string]string{
		"X-Ward-Peer-Id": "x_ward_peer_id",
		"X_Ward_Peer_Id": "x_ward_peer_id",
		"x.ward.peer.id": "x_ward_peer_id",
		"A1-b2":          "a1_b2",
		"":               "",
	} {
		if got := foldHeaderName(in); got != want {
			t.Errorf("foldHeaderName(%q) = %q, want %q", in, got, want)
		}
	}
}
