package policy

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"

	cedar "github.com/cedar-policy/cedar-go"
	"github.com/cedar-policy/cedar-go/types"
	xast "github.com/cedar-policy/cedar-go/x/exp/ast"
)

// Limits on policy input. They keep a hostile or mistaken file from
// exhausting memory or the parser's stack.
const (
	MaxFileSize   = 8 << 20  // bytes per policy file
	MaxTotalSize  = 64 << 20 // bytes over all files of a Set
	MaxNesting    = 128      // depth of (), [], {} and `if` nesting
	MaxUnaryChain = 32       // consecutive ! or - operators
	maxProblems   = 50
)

// Annotation keys ward understands. Other annotations are kept and ignored.
const (
	AnnotationID     = "id"
	AnnotationDryRun = "dryrun"
)

// The patterns are compiled on first use, not at start: every ward
// command links this package, few compile policies.
var idPattern = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9._:/@+-]{1,200}$`) })

// Problem is one thing wrong with the input of Compile, located as precisely
// as cedar-go allows (Line and Column are 1-based; 0 when unknown).
type Problem struct {
	File    string `json:"file"`
	Line    int    `json:"line,omitempty"`
	Column  int    `json:"column,omitempty"`
	Policy  string `json:"policy,omitempty"` // policy id, when the problem is inside a parsed policy
	Kind    string `json:"kind"`             // "syntax", "validation", "annotation", "duplicate-id", "limit", "deny-list"
	Message string `json:"message"`
	// Warning marks a problem that does not reject the set (Set.Warnings).
	Warning bool `json:"warning,omitempty"`
}

func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", p.Line, p.Column)
	}
	b.WriteString(": ")
	b.WriteString(p.Kind)
	if p.Warning {
		b.WriteString(" warning")
	} else {
		b.WriteString(" error")
	}
	if p.Policy != "" {
		fmt.Fprintf(&b, " in policy %q", p.Policy)
	}
	b.WriteString(": ")
	b.WriteString(p.Message)
	return b.String()
}

// CompileError lists every problem found; a Set is only produced when there
// are none.
type CompileError struct {
	Problems []Problem
}

func (e *CompileError) Error() string {
	lines := make([]string, 0, len(e.Problems)+1)
	lines = append(lines, fmt.Sprintf("policy set rejected (%d problem(s); nothing was applied, fix them and apply again)", len(e.Problems)))
	for _, p := range e.Problems {
		lines = append(lines, "  "+p.String())
	}
	return strings.Join(lines, "\n")
}

// Compile parses, validates and indexes files (name -> Cedar source) against
// DefaultSchema. It is pure: it returns a complete Set or a *CompileError,
// never a partial result. The returned Set has version 0 and an empty
// deny-list; see CompileBundle.
func Compile(files map[string][]byte) (*Set, error) {
	return DefaultSchema().Compile(files)
}

// Compile is Compile against schema s.
func (s *Schema) Compile(files map[string][]byte) (*Set, error) {
	m, err := s.prepare()
	if err != nil {
		return nil, err
	}
	return compile(m, files)
}

var (
	posPattern    = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`<input>:(\d+):(\d+)`) })
	tokenPattern  = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^"((?:[^"\\]|\\.)*)": `) })
	effectPattern = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^unexpected effect: (.*)$`) })
	exactPattern  = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^exact got (.*) want (.*)$`) })
	numberPattern = sync.OnceValue(func() *regexp.Regexp {
		return regexp.MustCompile(`^strconv.ParseInt: parsing "(-?[0-9]+)": value out of range$`)
	})
)

// syntaxProblem turns a cedar-go parse error, whose text names the position
// as "<input>:LINE:COL", into a Problem for file. cedar-go reports the token
// after a missing one; for "expected X, got Y" errors the position is moved
// back to Y itself.
func syntaxProblem(file string, src []byte, err error) Problem {
	msg := err.Error()
	p := Problem{File: file, Kind: "syntax"}
	msg = strings.TrimPrefix(msg, "parser error: ")
	msg = strings.TrimPrefix(msg, "parse error at ")
	if m := posPattern().FindStringSubmatchIndex(msg); m != nil {
		p.Line, _ = strconv.Atoi(msg[m[2]:m[3]])
		p.Column, _ = strconv.Atoi(msg[m[4]:m[5]])
		msg = msg[:m[0]] + msg[m[1]:]
	}
	msg = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(msg), ":"))
	near := ""
	if m := tokenPattern().FindStringSubmatch(msg); m != nil {
		near = m[1]
		msg = msg[len(m[0]):]
	}
	if m := effectPattern().FindStringSubmatch(msg); m != nil {
		msg = fmt.Sprintf("unexpected %q, expected permit or forbid", m[1])
		p.Line, p.Column = backTo(src, p.Line, p.Column, m[1])
	} else if m := exactPattern().FindStringSubmatch(msg); m != nil {
		got, want := m[1], m[2]
		if got == "" {
			msg = fmt.Sprintf("unexpected end of input, expected %q", want)
		} else {
			msg = fmt.Sprintf("unexpected %q, expected %q", got, want)
			p.Line, p.Column = backTo(src, p.Line, p.Column, got)
		}
	} else if msg == "invalid primary" {
		// The offending token is the one before the reported position.
		msg = "expected an expression (a value, variable or parenthesised expression)"
		if off := offsetOf(src, p.Line, p.Column); off > 0 {
			i := off - 1
			for i > 0 && (src[i] == ' ' || src[i] == '\t' || src[i] == '\n' || src[i] == '\r') {
				i--
			}
			p.Line, p.Column = positionOf(src, i)
		}
	} else if m := numberPattern().FindStringSubmatch(msg); m != nil && p.Line == 0 {
		if i := strings.Index(string(src), strings.TrimPrefix(m[1], "-")); i >= 0 {
			p.Line, p.Column = positionOf(src, i)
		}
		msg = fmt.Sprintf("integer literal %s does not fit in 64 bits", m[1])
	} else if near != "" {
		msg = fmt.Sprintf("near %q: %s", near, msg)
	}
	if msg == "" {
		msg = "invalid Cedar"
	}
	p.Message = msg
	return p
}

// tokenPosition is where the first of tokens (tried in order) occurs in
// src at or after the policy's start (line, col), so that a validation
// problem points at the offending name rather than at the policy; a token
// that starts with '.' or ' ' points after that character. Without a
// match it is the policy's start.
func tokenPosition(src []byte, line, col int, tokens []string) (int, int) {
	start := offsetOf(src, line, col)
	if start < 0 {
		return line, col
	}
	rest := string(src[start:])
	for _, t := range tokens {
		if t == "" {
			continue
		}
		if i := strings.Index(rest, t); i >= 0 {
			if t[0] == '.' || t[0] == ' ' {
				i++
			}
			return positionOf(src, start+i)
		}
	}
	return line, col
}

// backTo moves a reported position back to the last occurrence of token
// before it, when there is one.
func backTo(src []byte, line, col int, token string) (int, int) {
	if off := offsetOf(src, line, col); off >= 0 && token != "" {
		if i := strings.LastIndex(string(src[:off]), token); i >= 0 {
			return positionOf(src, i)
		}
	}
	return line, col
}

// offsetOf converts a 1-based line and rune column into a byte offset, or -1.
func offsetOf(src []byte, line, col int) int {
	if line < 1 || col < 1 {
		return -1
	}
	l, c := 1, 1
	for i, r := range string(src) {
		if l == line && c == col {
			return i
		}
		if r == '\n' {
			l, c = l+1, 1
		} else {
			c++
		}
	}
	if l == line && c == col {
		return len(src)
	}
	return -1
}

// positionOf converts a byte offset into a 1-based line and rune column.
func positionOf(src []byte, off int) (line, col int) {
	line, col = 1, 1
	for i, r := range string(src) {
		if i >= off {
			break
		}
		if r == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
	}
	return line, col
}

func parseFile(name string, src []byte) (list cedar.PolicyList, err error) {
	defer func() {
		if r := recover(); r != nil {
			// cedar-go is fuzzed, but a parser bug must not take the
			// authority down with it.
			list, err = nil, fmt.Errorf("cedar parser failed on this input: %v", r)
		}
	}()
	return cedar.NewPolicyListFromBytes(name, src)
}

func compile(m *model, files map[string][]byte) (*Set, error) {
	var probs []Problem
	addProb := func(p Problem) {
		if len(probs) < maxProblems {
			probs = append(probs, p)
		}
	}
	names := make([]string, 0, len(files))
	total := 0
	for n, src := range files {
		names = append(names, n)
		total += len(src)
	}
	sort.Strings(names)
	if total > MaxTotalSize {
		return nil, &CompileError{Problems: []Problem{{File: "(all files)", Kind: "limit",
			Message: fmt.Sprintf("policy files total %d bytes, more than the limit of %d; split the policy set", total, MaxTotalSize)}}}
	}

	set := &Set{model: m, byID: map[string]*compiled{}, cache: newDecisionCache()}
	firstSeen := map[string]Problem{}
	for _, name := range names {
		src := files[name]
		if len(src) > MaxFileSize {
			addProb(Problem{File: name, Kind: "limit", Message: fmt.Sprintf("file is %d bytes, more than the limit of %d; split it", len(src), MaxFileSize)})
			continue
		}
		if p, bad := checkNesting(src); bad {
			p.File = name
			addProb(p)
			continue
		}
		list, err := parseFile(name, src)
		if err != nil {
			addProb(syntaxProblem(name, src, err))
			continue
		}
		for i, cp := range list {
			pos := cp.Position()
			pa := (*xast.Policy)(cp.AST())
			loc := Problem{File: name, Line: pos.Line, Column: pos.Column}
			ann := cp.Annotations()
			id := fmt.Sprintf("%s#%d", name, i)
			if v, ok := ann[AnnotationID]; ok {
				id = string(v)
				if !idPattern().MatchString(id) {
					q := loc
					q.Kind, q.Message = "annotation", fmt.Sprintf("@id(%q) is not a valid policy id: use 1-200 of A-Z a-z 0-9 . _ : / @ + -", id)
					addProb(q)
					continue
				}
			}
			loc.Policy = id
			dry := false
			if v, ok := ann[AnnotationDryRun]; ok {
				switch v {
				case "true":
					dry = true
				case "false":
				default:
					q := loc
					q.Kind, q.Message = "annotation", fmt.Sprintf("@dryrun(%q): the value must be \"true\" or \"false\"", string(v))
					addProb(q)
					continue
				}
			}
			fedOK := false
			if v, ok := ann[AnnotationFederated]; ok {
				var ferr error
				if fedOK, ferr = federatedAnnotation(string(v)); ferr != nil {
					q := loc
					q.Kind, q.Message = "annotation", ferr.Error()
					addProb(q)
					continue
				}
			}
			if prev, dup := firstSeen[id]; dup {
				q := loc
				q.Kind, q.Message = "duplicate-id", fmt.Sprintf("policy id %q is already used at %s:%d:%d; policy ids must be unique across the set", id, prev.File, prev.Line, prev.Column)
				addProb(q)
				continue
			}
			firstSeen[id] = loc
			if vps := m.validate(pa); len(vps) > 0 {
				for _, vp := range vps {
					q := loc
					q.Line, q.Column = tokenPosition(src, pos.Line, pos.Column, vp.tokens)
					q.Kind, q.Message = "validation", vp.msg
					addProb(q)
				}
				continue
			}
			c := &compiled{
				id:     id,
				policy: cp,
				forbid: cp.Effect() == cedar.Forbid,
				dryRun: dry,
				file:   name,
				line:   pos.Line,
				column: pos.Column,
				text:   string(cp.MarshalCedar()),
			}
			c.actionMask = m.actionMask(pa.Action)
			c.needsAttrs, c.needsContext = dataNeeds(pa)
			c.readsTime = readsTime(pa)
			c.fast = compileFast(pa)
			c.pKey, c.pAny = scopeKey(pa.Principal)
			c.rKey, c.rAny = scopeKey(pa.Resource)
			if !fedOK {
				if w, bad := federationWarning(pa, loc); bad {
					set.warnings = append(set.warnings, w)
				}
			}
			set.byID[id] = c
			set.all = append(set.all, c)
		}
	}
	if len(probs) > 0 {
		return nil, &CompileError{Problems: probs}
	}
	set.buildIndex()
	return set, nil
}

// actionMask is the set of actions (as bits) an action scope can match.
func (m *model) actionMask(s xast.IsActionScopeNode) uint64 {
	switch a := s.(type) {
	case xast.ScopeTypeEq:
		return m.actionBit[a.Entity.ID]
	case xast.ScopeTypeIn:
		return m.actionDesc[a.Entity.ID]
	case xast.ScopeTypeInSet:
		var mask uint64
		for _, e := range a.Entities {
			mask |= m.actionDesc[e.ID]
		}
		return mask
	}
	return ^uint64(0)
}

// scopeKey returns the entity a principal or resource scope is anchored to:
// `== E`, `in E` and `is T in E` can only match a request whose entity is E
// or has E as an ancestor. Other scopes (all, `is T`) match any entity.
func scopeKey(s xast.IsScopeNode) (types.EntityUID, bool) {
	switch x := s.(type) {
	case xast.ScopeTypeEq:
		return x.Entity, false
	case xast.ScopeTypeIn:
		return x.Entity, false
	case xast.ScopeTypeIsIn:
		return x.Entity, false
	}
	return types.EntityUID{}, true
}

// checkNesting scans src lexically (skipping strings and comments) and
// reports input nested deeper than the limits, which would otherwise make
// the recursive-descent parser and evaluator recurse without bound.
func checkNesting(src []byte) (Problem, bool) {
	line, col := 1, 0
	depth, ifs, unary := 0, 0, 0
	fail := func(msg string) (Problem, bool) {
		return Problem{Line: line, Column: col, Kind: "limit", Message: msg}, true
	}
	for i := 0; i < len(src); i++ {
		c := src[i]
		col++
		switch {
		case c == '\n':
			line, col = line+1, 0
			unary = 0 // a conservative reset is fine: this is a guard, not a parser
		case c == '"':
			for i++; i < len(src) && src[i] != '"'; i++ {
				if src[i] == '\\' {
					i++
				} else if src[i] == '\n' {
					line, col = line+1, 0
				}
			}
		case c == '/' && i+1 < len(src) && src[i+1] == '/':
			for i < len(src) && src[i] != '\n' {
				i++
			}
			i--
		case c == '(' || c == '[' || c == '{':
			depth++
			unary = 0
			if depth+ifs > MaxNesting {
				return fail(fmt.Sprintf("expressions nest deeper than %d levels; simplify the policy", MaxNesting))
			}
		case c == ')' || c == ']' || c == '}':
			depth--
			unary = 0
		case c == '!' || c == '-':
			if c == '!' && i+1 < len(src) && src[i+1] == '=' {
				unary = 0
				continue
			}
			unary++
			if unary > MaxUnaryChain {
				return fail(fmt.Sprintf("more than %d consecutive ! or - operators", MaxUnaryChain))
			}
		case c == ';' && depth <= 0:
			ifs, unary = 0, 0
		case isIdentByte(c):
			j := i
			for j < len(src) && isIdentByte(src[j]) {
				j++
			}
			if string(src[i:j]) == "if" && (i == 0 || !isIdentByte(src[i-1])) {
				ifs++
				if depth+ifs > MaxNesting {
					return fail(fmt.Sprintf("expressions nest deeper than %d levels (counting `if`); simplify the policy", MaxNesting))
				}
			}
			col += j - i - 1
			i = j - 1
			unary = 0
		case c == ' ' || c == '\t' || c == '\r':
		default:
			unary = 0
		}
	}
	return Problem{}, false
}

func isIdentByte(c byte) bool {
	return c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}
