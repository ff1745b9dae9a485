// Package webhook is the HTTP delivery core shared by the http and slack sinks: one POST per
// attempt with go-retryablehttp's retry policy, classified into the errors relay.Sink
// promises, with every secret kept out of logs and error messages.
//
// A plain-http destination reached without a proxy, with the default client, is spoken to
// directly (h1.go: the request written and its answer read on the caller's goroutine, over a
// pool of keep-alive connections); https, a proxy or a caller's own http.Client go through
// net/http.
//
// Within one Do call the request is retried quickly (Config.Retries times) on connection
// errors, timeouts, 408, 429 and 5xx other than 501, waiting with capped exponential backoff
// and jitter, or for Retry-After (capped at Config.MaxBackoff) on 429 and 503. The body is a
// byte slice, so it is replayed exactly on each retry. Any other 4xx is permanent and returned
// at once as a *relay.StatusError wrapping relay.ErrPermanent; a response that is still
// failing after the last retry, or no response at all, is a non-permanent *relay.StatusError
// that says how many attempts were made, so the delivery engine reschedules it.
//
// Secrets: the URL (userinfo, query values and, for Slack, its whole path), the header
// values and any extra literal named in Config.Secrets are replaced in everything
// retryablehttp logs and in every error message. Redirects are not followed by the default
// client, so a request never carries its headers to another URL.
package webhook
