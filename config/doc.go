// Package config loads and validates hubrelay's YAML configuration.
//
// Load and Parse decode the file into yaml.v3 nodes, so that every problem can be reported at
// the line and column of the node responsible, and keep going after the first one: the
// result is either a complete, valid *Config or Problems listing everything wrong, each
// formatted "FILE:LINE:COL: PATH: MSG" (for example
// "hubrelay.yaml:14:10: sinks[1].url: must be an http or https URL (got scheme \"ftp\")").
// Unknown keys, keys that belong to another sink type, bad durations and sizes, duplicate
// names, rules naming missing sinks and `when` expressions that do not compile are all
// problems. Messages never contain secret values (verify tokens, app secrets, header values,
// sign secrets, sink URLs).
//
// Values may refer to environment variables as ${NAME} or ${NAME:-default} (the default is
// used when NAME is unset or empty); "$$" is a literal "$". References are expanded inside
// values only, after parsing, so an expanded value never changes the document's structure.
// A secret can also be read from a file with the *_file twin of its key (verify_token_file,
// app_secrets_file with one secret per line, sign_secret_file, webhook_url_file); its
// trailing newline is dropped.
//
// YAML anchors, aliases and merge keys ("<<: *defaults") work as usual; top-level keys that
// start with "x-" are ignored, as a place to define anchors.
//
// Defaults come from Default and DefaultSink. Relative paths are relative to the current
// directory of the process, not to the config file; dead_letter.dir defaults to
// <storage.dir>/dead-letter.
package config
