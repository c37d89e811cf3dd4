package anomaly

import (
	"errors"
	"fmt"
	"net/url"
	"time"
)

// Config holds the detector's thresholds (docs/anomaly.md). The zero value
// of a field means its default (Defaults); Validate names what is wrong.
type Config struct {
	// RestrictedClassifications are the key classifications whose first
	// use by a caller is alerted (default: restricted).
	RestrictedClassifications []string
	// Alpha is the EWMA weight of one minute in the per-series rate
	// baseline (0 < Alpha < 1; default 0.05, a memory of about 20 minutes).
	Alpha float64
	// Sigma: a minute's decrypt count above mean + Sigma·stddev of the
	// baseline is a burst (default 6).
	Sigma float64
	// Factor: a burst must also exceed Factor × the baseline mean (default 10).
	Factor float64
	// MinDecrypts: a burst must also exceed this many decrypted items in
	// one minute (default 300), so a quiet series does not alert on a few.
	MinDecrypts float64
	// MinDenials: a denial spike is at least this many denials by one
	// caller in one minute, above mean + Sigma·stddev (default 20).
	MinDenials float64
	// LearningPeriod: first uses (restricted keys, trust domains) seen in
	// this time after the first event only build the baseline (default 1h).
	// The authority also primes the detector from the log's recent events.
	LearningPeriod time.Duration
	// Cooldown: one alert per kind, caller and key in this time (default 10m).
	Cooldown time.Duration
	// HourBaseline: a (caller, key) pair's hour-of-day histogram is its
	// time-of-day baseline once the pair has been seen for this long
	// (default 7 days, at least 24h); after that a use in an hour of the
	// day (UTC) in which the pair was never used is an unusual_hour alert.
	HourBaseline time.Duration
	// HourMinEvents: the pair must also have at least this many events
	// (default 200), so a rarely used pair has no time-of-day baseline.
	HourMinEvents int
	// MaxSeries bounds the tracked (caller, key, operation) series
	// (default 200000); beyond it new series are counted, not tracked.
	MaxSeries int
	// QueueSize bounds the events waiting to be scored (default 65536);
	// when full, events are dropped and counted, never waited for.
	QueueSize int
	// RecentAlerts is how many alerts List keeps (default 1000).
	RecentAlerts int
	// WebhookURL, when set, receives each alert as JSON (http or https).
	WebhookURL string
	// WebhookTimeout bounds one webhook request (default 5s).
	WebhookTimeout time.Duration
}

// Defaults returns c with every zero field set to its default.
func (c Config) Defaults() Config {
	if len(c.RestrictedClassifications) == 0 {
		c.RestrictedClassifications = []string{"restricted"}
	}
	if c.Alpha == 0 {
		c.Alpha = 0.05
	}
	if c.Sigma == 0 {
		c.Sigma = 6
	}
	if c.Factor == 0 {
		c.Factor = 10
	}
	if c.MinDecrypts == 0 {
		c.MinDecrypts = 300
	}
	if c.MinDenials == 0 {
		c.MinDenials = 20
	}
	if c.LearningPeriod == 0 {
		c.LearningPeriod = time.Hour
	}
	if c.Cooldown == 0 {
		c.Cooldown = 10 * time.Minute
	}
	if c.HourBaseline == 0 {
		c.HourBaseline = 7 * 24 * time.Hour
	}
	if c.HourMinEvents == 0 {
		c.HourMinEvents = 200
	}
	if c.MaxSeries == 0 {
		c.MaxSeries = 200000
	}
	if c.QueueSize == 0 {
		c.QueueSize = 65536
	}
	if c.RecentAlerts == 0 {
		c.RecentAlerts = 1000
	}
	if c.WebhookTimeout == 0 {
		c.WebhookTimeout = 5 * time.Second
	}
	return c
}

// Validate reports the first unfit threshold of c (after Defaults).
func (c Config) Validate() error {
	switch {
	case c.Alpha <= 0 || c.Alpha >= 1:
		return fmt.Errorf("anomaly.alpha is %v: use a weight between 0 and 1 (exclusive), e.g. 0.05", c.Alpha)
	case c.Sigma < 1:
		return fmt.Errorf("anomaly.sigma is %v: use at least 1 (standard deviations above the baseline; default 6)", c.Sigma)
	case c.Factor < 1:
		return fmt.Errorf("anomaly.factor is %v: use at least 1 (times the baseline mean; default 10)", c.Factor)
	case c.MinDecrypts < 1:
		return fmt.Errorf("anomaly.min_decrypts_per_minute is %v: use at least 1", c.MinDecrypts)
	case c.MinDenials < 1:
		return fmt.Errorf("anomaly.min_denials_per_minute is %v: use at least 1", c.MinDenials)
	case c.LearningPeriod < 0:
		return fmt.Errorf("anomaly.learning_period is %v: use 0 (default 1h) or more", c.LearningPeriod)
	case c.Cooldown < 0:
		return fmt.Errorf("anomaly.cooldown is %v: use 0 (default 10m) or more", c.Cooldown)
	case c.HourBaseline < 24*time.Hour:
		return fmt.Errorf("anomaly.hour_baseline is %v: use at least 24h (a whole day of the pair's hours; default 168h)", c.HourBaseline)
	case c.HourMinEvents < 1:
		return fmt.Errorf("anomaly.hour_min_events is %d: use at least 1 (default 200)", c.HourMinEvents)
	case c.MaxSeries < 0 || c.QueueSize < 0 || c.RecentAlerts < 0:
		return errors.New("anomaly.max_series, queue_size and recent_alerts must not be negative")
	case c.WebhookTimeout < 0 || c.WebhookTimeout > time.Minute:
		return fmt.Errorf("anomaly.webhook_timeout is %v: use at most 1m", c.WebhookTimeout)
	}
	for _, n := range c.RestrictedClassifications {
		if n == "" {
			return errors.New("anomaly.restricted_classifications has an empty name")
		}
	}
	if c.WebhookURL != "" {
		u, err := url.Parse(c.WebhookURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("anomaly.webhook_url %q: use an absolute http or https URL", c.WebhookURL)
		}
		if u.User != nil {
			return errors.New("anomaly.webhook_url holds credentials: put no user or password in it")
		}
	}
	return nil
}
