// Package webhook is the HTTP delivery core shared by the http and slack sinks: one POST per
// attempt through go-retryablehttp, classified into the errors relay.Sink promises, with every
// secret kept out of logs and error messages.
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
