package front

import (
	"errors"
	"fmt"
	"strings"

	"github.com/hubrelay/hubrelay/relay/internal/hexdigit"
)

// SubjectCommonName returns the common name (CN) of a distinguished name in the RFC 2253
// form proxies send, such as
// `CN=client.webhooks.fbclientcerts.com,O=Meta Platforms\, Inc.,L=Menlo Park,ST=California,C=US`.
// Escapes (`\,`, `\+`, `\2C`…), quoted values and multi-valued RDNs are understood; a name
// with no CN, or with more than one, is an error.
func SubjectCommonName(dn string) (string, error) {
	attrs, err := parseDN(dn)
	if err != nil {
		return "", err
	}
	cn, found := "", false
	for _, a := range attrs {
		if !isCommonNameType(a.typ) {
			continue
		}
		if found {
			return "", errors.New("more than one common name")
		}
		cn, found = a.val, true
	}
	if !found {
		return "", errors.New("no common name")
	}
	return cn, nil
}

func isCommonNameType(t string) bool {
	return strings.EqualFold(t, "CN") || strings.EqualFold(t, "commonName") ||
		t == "2.5.4.3" || strings.EqualFold(t, "OID.2.5.4.3")
}

type dnAttr struct{ typ, val string }

// parseDN splits a distinguished name into its attributes, in order. Separators between
// RDNs (',' or ';') and inside multi-valued RDNs ('+') are not told apart: the caller only
// looks for one attribute type.
func parseDN(s string) ([]dnAttr, error) {
	var out []dnAttr
	i := 0
	skipSpace := func() {
		for i < len(s) && s[i] == ' ' {
			i++
		}
	}
	for {
		skipSpace()
		eq := strings.IndexByte(s[i:], '=')
		if eq < 0 {
			return nil, fmt.Errorf("attribute %d has no '='", len(out)+1)
		}
		typ := strings.TrimSpace(s[i : i+eq])
		if typ == "" || strings.ContainsAny(typ, ",;+\"\\") {
			return nil, fmt.Errorf("attribute %d has a bad type", len(out)+1)
		}
		i += eq + 1
		skipSpace()
		var val []byte
		if i < len(s) && s[i] == '"' {
			i++
			closed := false
			for i < len(s) && !closed {
				switch c := s[i]; c {
				case '\\':
					if i+1 >= len(s) {
						return nil, errors.New("backslash at the end")
					}
					val = append(val, s[i+1])
					i += 2
				case '"':
					closed = true
					i++
				default:
					val = append(val, c)
					i++
				}
			}
			if !closed {
				return nil, errors.New("unterminated quoted value")
			}
			skipSpace()
		} else {
			trailing := 0 // unescaped spaces at the end of val, which are not part of it
		value:
			for i < len(s) {
				c := s[i]
				switch c {
				case ',', ';', '+':
					break value
				case '"':
					return nil, errors.New("unescaped quote in a value")
				case '\\':
					if i+1 >= len(s) {
						return nil, errors.New("backslash at the end")
					}
					if b, ok := unhexPair(s[i+1:]); ok {
						val = append(val, b)
						i += 3
					} else {
						val = append(val, s[i+1])
						i += 2
					}
					trailing = 0
					continue
				}
				val = append(val, c)
				if c == ' ' {
					trailing++
				} else {
					trailing = 0
				}
				i++
			}
			val = val[:len(val)-trailing]
		}
		out = append(out, dnAttr{typ: typ, val: string(val)})
		if i >= len(s) {
			return out, nil
		}
		switch s[i] {
		case ',', ';', '+':
			i++
		default:
			return nil, fmt.Errorf("unexpected %q after a quoted value", s[i])
		}
	}
}

func unhexPair(s string) (byte, bool) {
	if len(s) < 2 {
		return 0, false
	}
	return hexdigit.Pair(s[0], s[1])
}
