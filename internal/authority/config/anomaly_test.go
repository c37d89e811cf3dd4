package config

import (
	"strings"
	"testing"
	"time"
)

func TestAnomalySection(t *testing.T) {
	cfg, err := Parse([]byte("trust_domain: a.org\ndata_dir: /d\nanomaly:\n  sigma: 8\n  cooldown: 5m\n  hour_baseline: 3d\n  hour_min_events: 50\n  restricted_classifications: [restricted, confidential]\n  webhook_url: https://hooks.example/ward\n"))
	if err != nil {
		t.Fatal(err)
	}
	if a := cfg.Anomaly; a.Sigma != 8 || time.Duration(a.Cooldown) != 5*time.Minute || len(a.RestrictedClassifications) != 2 || a.Disabled ||
		time.Duration(a.HourBaseline) != 72*time.Hour || a.HourMinEvents != 50 {
		t.Fatalf("anomaly section: %+v", a)
	}
	for _, c := range []struct{ yaml, want string }{
		{"anomaly:\n  alpha: 1.5\n", "anomaly.alpha"},
		{"anomaly:\n  sigma: 0.5\n", "anomaly.sigma"},
		{"anomaly:\n  restricted_classifications: [secret]\n", `"secret" is no classification`},
		{"anomaly:\n  webhook_url: ftp://x\n", "anomaly.webhook_url"},
		{"anomaly:\n  webhook_url: https://u:p@x/\n", "credentials"},
		{"anomaly:\n  webhook_url: http://alerts.example.org/ward\n", "over https"},
		{"anomaly:\n  webhook_timeout: 2m\n", "anomaly.webhook_timeout"},
		{"anomaly:\n  queue_size: -1\n", "anomaly.max_series"},
		{"anomaly:\n  thresholds: 3\n", "thresholds"},
		{"anomaly:\n  prime_events: -5\n", "anomaly.prime_events"},
		{"anomaly:\n  hour_baseline: 12h\n", "anomaly.hour_baseline"},
		{"anomaly:\n  hour_min_events: -1\n", "anomaly.hour_min_events"},
	} {
		_, err := Parse([]byte("trust_domain: a.org\ndata_dir: /d\n" + c.yaml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want one naming %q", c.yaml, err, c.want)
		}
	}
}
