package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"gopkg.in/yaml.v3"
)

// DecodeStrict decodes one YAML document into out: unknown fields, an
// empty file and extra documents are errors. docs names the page with an
// example, for the empty-file message.
func DecodeStrict(b []byte, out any, docs string) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("file is empty: see %s for an example", docs)
		}
		return fmt.Errorf("invalid YAML: %v", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return errors.New("more than one YAML document: keep the whole configuration in one")
	}
	return nil
}
