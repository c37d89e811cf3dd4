package report

import (
	"bufio"
	_ "embed"
	"encoding/json"
	"html/template"
	"io"
	"strconv"
	"sync"
	"time"
)

//go:embed report.html.tmpl
var reportTemplate string

// tmpl is parsed on first use, not when ward starts (every command links
// this package; only `ward report` renders).
var tmpl = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("report").Funcs(template.FuncMap{
		"ts": func(t time.Time) string {
			if t.IsZero() {
				return "-"
			}
			return t.UTC().Format("2006-01-02 15:04:05Z")
		},
		"pct": formatPct,
	}).Parse(reportTemplate))
})

func formatPct(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) + "%" }

// WriteHTML renders r as one self-contained HTML page: inline CSS and SVG,
// no script, no external resource.
func WriteHTML(w io.Writer, r *Report) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	data := struct {
		*Report
		Charts []Chart
	}{r, charts(r)}
	if err := tmpl().Execute(bw, data); err != nil {
		return err
	}
	return bw.Flush()
}

// WriteJSON writes r as indented JSON (durations in seconds).
func WriteJSON(w io.Writer, r *Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
