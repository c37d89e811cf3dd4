package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/wardproject/ward/internal/shared/yamlconf"
)

// Anomaly configures the anomaly detector on key access that scores the
// audit stream (docs/anomaly.md). Zero values mean the documented
// defaults. The CLI builds the detector (internal/governance/anomaly) from
// it; the checks here run when the configuration is loaded.
type Anomaly struct {
	// Disabled turns the detector off (it runs by default).
	Disabled bool `yaml:"disabled"`
	// RestrictedClassifications: first use of a key of these KMS
	// classifications by a caller is alerted (default [restricted]).
	RestrictedClassifications []string          `yaml:"restricted_classifications"`
	Alpha                     float64           `yaml:"alpha"`  // EWMA weight per minute (default 0.05)
	Sigma                     float64           `yaml:"sigma"`  // standard deviations above the baseline (default 6)
	Factor                    float64           `yaml:"factor"` // times the baseline mean (default 10)
	MinDecryptsPerMinute      float64           `yaml:"min_decrypts_per_minute"`
	MinDenialsPerMinute       float64           `yaml:"min_denials_per_minute"`
	LearningPeriod            yamlconf.Duration `yaml:"learning_period"`
	Cooldown                  yamlconf.Duration `yaml:"cooldown"`
	MaxSeries                 int               `yaml:"max_series"`
	// HourBaseline and HourMinEvents: when a (caller, key) pair's
	// hour-of-day histogram is its time-of-day baseline (defaults 168h and
	// 200 events); then a use in an hour it never was used in is alerted.
	HourBaseline  yamlconf.Duration `yaml:"hour_baseline"`
	HourMinEvents int               `yaml:"hour_min_events"`
	// PrimeEvents: how many of the log's newest events build the baseline
	// before the first live event is scored (default 100000).
	PrimeEvents    int               `yaml:"prime_events"`
	QueueSize      int               `yaml:"queue_size"`
	WebhookURL     string            `yaml:"webhook_url"`
	WebhookTimeout yamlconf.Duration `yaml:"webhook_timeout"`
}

func (a *Anomaly) validate(classifications []string) error {
	switch {
	case a.Alpha < 0 || a.Alpha >= 1:
		return fmt.Errorf("anomaly.alpha is %v: use a weight between 0 and 1 (exclusive), e.g. 0.05 (0 means the default)", a.Alpha)
	case a.Sigma != 0 && a.Sigma < 1:
		return fmt.Errorf("anomaly.sigma is %v: use at least 1 standard deviation (default 6)", a.Sigma)
	case a.Factor != 0 && a.Factor < 1:
		return fmt.Errorf("anomaly.factor is %v: use at least 1 (times the baseline mean; default 10)", a.Factor)
	case a.MinDecryptsPerMinute < 0 || a.MinDenialsPerMinute < 0:
		return errors.New("anomaly.min_decrypts_per_minute and min_denials_per_minute must not be negative (0 means the default)")
	case a.LearningPeriod < 0 || a.Cooldown < 0:
		return errors.New("anomaly.learning_period and anomaly.cooldown must not be negative")
	case a.HourBaseline != 0 && time.Duration(a.HourBaseline) < 24*time.Hour:
		return fmt.Errorf("anomaly.hour_baseline is %v: use at least 24h (0 means the default, 168h)", time.Duration(a.HourBaseline))
	case a.HourMinEvents < 0:
		return errors.New("anomaly.hour_min_events must not be negative (0 means the default, 200)")
	case a.MaxSeries < 0 || a.QueueSize < 0:
		return errors.New("anomaly.max_series and anomaly.queue_size must not be negative (0 means the default)")
	case a.PrimeEvents < 0 || a.PrimeEvents > 10_000_000:
		return fmt.Errorf("anomaly.prime_events is %d: use 0 (default 100000) to 10000000", a.PrimeEvents)
	case time.Duration(a.WebhookTimeout) < 0 || time.Duration(a.WebhookTimeout) > time.Minute:
		return fmt.Errorf("anomaly.webhook_timeout is %v: use at most 1m (default 5s)", time.Duration(a.WebhookTimeout))
	}
	known := map[string]bool{}
	for _, c := range classifications {
		known[c] = true
	}
	for _, c := range a.RestrictedClassifications {
		if !known[c] {
			return fmt.Errorf("anomaly.restricted_classifications: %q is no classification of kms.classifications (%v)", c, classifications)
		}
	}
	if a.WebhookURL != "" {
		u, err := url.Parse(a.WebhookURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("anomaly.webhook_url %q: use an absolute http or https URL", a.WebhookURL)
		}
		if u.User != nil {
			return errors.New("anomaly.webhook_url holds credentials: put no user or password in it (alerts carry no secrets, and neither should their address)")
		}
		if u.Scheme == "http" && !loopbackHost(u.Hostname()) {
			return fmt.Errorf("anomaly.webhook_url %q: alerts name callers and keys, so send them over https (plain http only to a loopback address such as a local relay)", a.WebhookURL)
		}
	}
	return nil
}

// loopbackHost reports whether host is localhost or a loopback IP.
func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
