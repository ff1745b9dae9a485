// Package jsonscan holds hubrelay's two JSON readers and its JSON string writer, on one set
// of lexical helpers (whitespace, strings, numbers, literals, \u escapes):
//
//	scan.go   Scanner: a strict, non-recursive reader over a byte slice that validates what it
//	          passes and hands out sub-slices; relay's envelope decoder (relay/decode.go) and
//	          dedup keys (relay/key.go) walk notifications with it
//	value.go  Parse and ParseProjected: one value into encoding/json's interface{} types, for
//	          rule expressions (relay/route.go), whole or only the keys the rules read
//	quote.go  AppendString: a Go string as a JSON string, as encoding/json writes it
//	lex.go    what both readers share
//
// Both readers accept exactly what encoding/json.Valid accepts; the tests and the fuzz
// targets (FuzzParseValue, FuzzParseProjected here, FuzzDecode in relay) hold them to it.
package jsonscan
