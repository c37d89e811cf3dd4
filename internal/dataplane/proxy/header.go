package proxy

import "net/http"

// proxyOwnedHeaders are the request headers an http-header listener owns:
// the ones it sets (HeaderPeerID, HeaderCorrelationID) and the forwarding
// headers httputil.ReverseProxy removes before Rewrite. A caller's value
// under any spelling of these names is removed before the request reaches
// the app.
var proxyOwnedHeaders = []string{HeaderPeerID, HeaderCorrelationID,
	"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

// foldHeaderName folds a header name as loosely as any common server or
// gateway interface does: ASCII letters to lower case, and every other
// byte that is not a letter or digit ('-', '_', '.', ...) to '_'. nginx
// (underscores_in_headers on, $http_x_ward_peer_id), Apache's CGI
// environment (non-alphanumerics become '_'), CGI, WSGI and Rack
// (HTTP_X_WARD_PEER_ID) all map X-Ward-Peer-Id, x_ward_peer_id and
// X.Ward.Peer.Id to the same name, so all of those are one header to the
// app.
func foldHeaderName(name string) string {
	b := make([]byte, len(name))
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		default:
			c = '_'
		}
		b[i] = c
	}
	return string(b)
}

var foldedOwned = func() map[string]bool {
	m := map[string]bool{}
	for _, n := range proxyOwnedHeaders {
		m[foldHeaderName(n)] = true
	}
	return m
}()

// stripOwnedHeaders deletes from h every header that an app could read as
// one of proxyOwnedHeaders, whatever its spelling.
func stripOwnedHeaders(h http.Header) {
	for k := range h {
		if foldedOwned[foldHeaderName(k)] {
			delete(h, k)
		}
	}
}
