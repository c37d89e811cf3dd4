package report

import (
	"fmt"
	"io"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// MaxMetricsBytes bounds one scraped /metrics page.
const MaxMetricsBytes = 16 << 20

// ProxyCoverage reads a ward proxy's (or gateway's) Prometheus text
// metrics: completed mTLS handshakes by TLS version and key-exchange group
// (ward_proxy_tls_handshakes_total) and failed ones
// (ward_proxy_handshake_failures_total). The page is untrusted input: it
// is read up to MaxMetricsBytes and parsed by the Prometheus text parser.
func ProxyCoverage(source string, r io.Reader) (Coverage, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(io.LimitReader(r, MaxMetricsBytes))
	if err != nil {
		return Coverage{}, fmt.Errorf("metrics of %s: %w", source, err)
	}
	c := Coverage{Source: source}
	hs, ok := fams["ward_proxy_tls_handshakes_total"]
	if !ok {
		return Coverage{}, fmt.Errorf("metrics of %s: no ward_proxy_tls_handshakes_total: is it a ward proxy's metrics address?", source)
	}
	for _, m := range hs.GetMetric() {
		n := counter(m)
		c.MTLS += n
		if v := label(m, "version"); v == "1.3" || v == "TLS 1.3" {
			c.TLS13 += n
		}
		if strings.Contains(strings.ToUpper(label(m, "group")), "MLKEM") {
			c.PQ += n
		}
	}
	for _, m := range fams["ward_proxy_handshake_failures_total"].GetMetric() {
		c.Failed += counter(m)
	}
	c.Evidence = fmt.Sprintf("%s: ward_proxy_tls_handshakes_total (%d series), ward_proxy_handshake_failures_total", source, len(hs.GetMetric()))
	return c, nil
}

func counter(m *dto.Metric) uint64 {
	v := m.GetCounter().GetValue()
	if v <= 0 || v != v {
		return 0
	}
	if v > 1<<38 { // a page holds under 2^24 series: sums cannot overflow
		return 1 << 38
	}
	return uint64(v)
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
