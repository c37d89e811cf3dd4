package anomaly

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"time"
)

// webhook posts alerts as JSON, one request each, from its own goroutine
// behind a small bounded queue: a slow or dead receiver costs dropped
// (counted) deliveries, never a stalled detector. The payload is the
// Alert: names and numbers only.
type webhook struct {
	url    string
	client *http.Client
	queue  chan Alert
	m      *metrics
}

func newWebhook(url string, timeout time.Duration, m *metrics) *webhook {
	return &webhook{url: url, client: &http.Client{Timeout: timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		queue: make(chan Alert, 64), m: m}
}

func (w *webhook) send(a Alert) {
	select {
	case w.queue <- a:
	default:
		w.m.hookDropped.Inc()
	}
}

func (w *webhook) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case a := <-w.queue:
			if w.post(ctx, a) {
				w.m.hookSent.Inc()
			} else {
				w.m.hookFailed.Inc()
			}
		}
	}
}

func (w *webhook) post(ctx context.Context, a Alert) bool {
	body, err := json.Marshal(struct {
		Source string `json:"source"`
		Alert
	}{"ward", a})
	if err != nil {
		return false
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return false
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.client.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 300
}
