package relay

import (
	"bytes"
	"math"
	"strconv"
	"time"

	"github.com/hubrelay/hubrelay/relay/internal/jsonscan"
)

// entryTime reads entry[].time: a number, a numeric string ("1700000000") or an ISO 8601
// string ("2026-11-23T12:00:00+0000", RFC 3339), as Unix time (numbers as sent, fractions
// truncated; ISO times in seconds), 0 when it is none of those. raw is the JSON token exactly
// as sent, kept for the envelope, except for a plain integer, which Time reproduces. Only
// invalid JSON is an error.
func entryTime(s *jsonscan.Scanner) (t int64, raw string, err error) {
	switch c := s.Peek(); {
	case c == '-' || jsonscan.IsDigit(c):
		num, err := s.Number()
		if err != nil {
			return 0, "", err
		}
		t = parseLenientInt(num)
		if string(num) != strconv.FormatInt(t, 10) || t == 0 {
			raw = string(num)
		}
		return t, raw, nil
	case c == '"':
		start := s.Pos()
		text, err := s.Str()
		if err != nil {
			return 0, "", err
		}
		return parseTimeText(text), string(s.Since(start)), nil
	default:
		start := s.Pos()
		if err := s.Skip(); err != nil {
			return 0, "", err
		}
		return 0, string(s.Since(start)), nil
	}
}

// isoLayouts are the ISO 8601 forms entry.time is read in: Graph API's (+0000), RFC 3339, and
// both without seconds' fraction or zone.
var isoLayouts = []string{
	"2006-01-02T15:04:05.999999999Z0700",
	time.RFC3339Nano,
	"2006-01-02T15:04:05.999999999",
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02",
}

// parseTimeText reads a numeric string as parseLenientInt does, else an ISO 8601 time as Unix
// seconds, else 0.
func parseTimeText(b []byte) int64 {
	if len(b) > 0 && (b[0] == '-' || jsonscan.IsDigit(b[0])) && !bytes.ContainsAny(b, "T:") {
		if n := parseLenientInt(b); n != 0 {
			return n
		}
	}
	if len(b) > 64 {
		return 0
	}
	for _, layout := range isoLayouts {
		if tm, err := time.Parse(layout, string(b)); err == nil {
			return tm.Unix()
		}
	}
	return 0
}

// parseLenientInt parses b as a decimal integer, else as a float truncated toward zero, else 0.
func parseLenientInt(b []byte) int64 {
	if n, err := strconv.ParseInt(string(b), 10, 64); err == nil {
		return n
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil || math.IsNaN(f) || f >= math.MaxInt64 || f <= math.MinInt64 {
		return 0
	}
	return int64(f)
}
