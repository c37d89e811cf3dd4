package config

import (
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/wardproject/ward/internal/shared/yamlconf"
)

// Dashboard configures the authority's read-only web dashboard
// (docs/dashboard.md). It is off unless address is set, and it listens on
// loopback only: reach it from elsewhere through an SSH tunnel or a port
// forward, never by exposing it.
type Dashboard struct {
	// Address is host:port on a loopback address (127.0.0.1:8300,
	// [::1]:8300, localhost:8300); empty turns the dashboard off.
	Address string `yaml:"address"`
	// TokenFile holds the token that logs in (default
	// <data_dir>/dashboard.token). The authority creates it (random, mode
	// 0600) if it does not exist, and refuses one others can read.
	TokenFile string `yaml:"token_file"`
	// RefreshInterval: how often open pages get a new snapshot (default
	// 1s, at least 100ms).
	RefreshInterval yamlconf.Duration `yaml:"refresh_interval"`
	// MaxStreamsPerClient bounds the live streams (open pages) of one
	// client address (default 4); MaxStreams all of them (default 32).
	MaxStreamsPerClient int `yaml:"max_streams_per_client"`
	MaxStreams          int `yaml:"max_streams"`
}

func (d *Dashboard) defaults(dataDir string) {
	if d.Address == "" {
		return
	}
	if d.TokenFile == "" && dataDir != "" {
		d.TokenFile = filepath.Join(dataDir, "dashboard.token")
	}
	if d.RefreshInterval == 0 {
		d.RefreshInterval = yamlconf.Duration(time.Second)
	}
}

func (d *Dashboard) validate() error {
	if d.Address == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(d.Address)
	if err != nil || port == "" {
		return fmt.Errorf("dashboard.address %q: use host:port on a loopback address, e.g. 127.0.0.1:8300", d.Address)
	}
	if !loopbackHost(host) {
		return fmt.Errorf("dashboard.address %q is not a loopback address: the dashboard listens on loopback only (127.0.0.1, ::1 or localhost); reach it from another machine through an SSH tunnel (ssh -L 8300:127.0.0.1:8300 authority-host)", d.Address)
	}
	if err := absPath("dashboard.token_file", d.TokenFile); err != nil {
		return err
	}
	if iv := time.Duration(d.RefreshInterval); iv < 100*time.Millisecond || iv > time.Minute {
		return fmt.Errorf("dashboard.refresh_interval %s: use 100ms to 1m (default 1s)", iv)
	}
	if d.MaxStreamsPerClient < 0 || d.MaxStreams < 0 || d.MaxStreamsPerClient > 1000 || d.MaxStreams > 10000 {
		return fmt.Errorf("dashboard.max_streams_per_client and max_streams: use 0 (defaults 4 and 32) or a small positive bound")
	}
	return nil
}
